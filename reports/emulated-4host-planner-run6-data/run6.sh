#!/bin/bash
# 1 Gbit/s points of the planner acceptance again, after interleaved trials per (family, N_b)
set -e
cd /work/main
PY=.venv/bin/python
D=/work/exp/run6
( while true; do echo "$(date -u +%FT%TZ) $(cat /proc/loadavg)" >> $D/load.log; sleep 15; done ) & LOG=$!
trap "kill $LOG; $PY -m bench.cluster down --name acc9f" EXIT
export DETR_CLUSTER_NAME=acc9f
$PY -m bench.cluster up --name acc9f --hosts 4 --rate 1gbit --cpu-quota 0.45
$PY -m bench.sweep --launcher cluster --rates 1gbit --seqs 128,512 --predict --out $D/equal.jsonl -- --boundary replicate,tp --warmup 4 --iters 10
$PY -m bench.sweep --launcher cluster --rates 1gbit --seqs 128,512 --strategies auto --out $D/equal.jsonl -- --warmup 4 --iters 10
echo DONE
