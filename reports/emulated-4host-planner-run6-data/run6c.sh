#!/bin/bash
# P=3: the bp rows the sweep skipped (N_div 4 does not split over 3 hosts), with --ndiv 3
set -e
cd /work/main
PY=.venv/bin/python
D=/work/exp/run6
( while true; do echo "$(date -u +%FT%TZ) $(cat /proc/loadavg)" >> $D/load.log; sleep 15; done ) & LOG=$!
trap "kill $LOG; $PY -m bench.cluster down --name acc9fp3 || true" EXIT
export DETR_CLUSTER_NAME=acc9fp3
$PY -m bench.cluster up --name acc9fp3 --hosts 3 --rate 100mbit --cpu-quota 0.45
$PY -m bench.cluster run -- $PY -m bench.latency --model bert-base --seq 128 --batch 1 --out $D/p3.jsonl --rate 100mbit --profile $D/p3.jsonl.profile-bert-base-100mbit-nall.json --strategies bp --boundary replicate,tp --ndiv 3 --warmup 1 --iters 5 --tag "sweep_point=latency|bert-base|seq=128|batch=1|rate=100mbit|n=all|ndiv=3"
echo DONE-C
