#!/bin/bash
# the rest of the planner acceptance (100 and 10 Mbit/s, unequal hosts, 3 hosts), after run6.sh
set -e
cd /work/main
PY=.venv/bin/python
D=/work/exp/run6
while pgrep -f run6.sh > /dev/null; do sleep 10; done; grep -q DONE $D/run.log
( while true; do echo "$(date -u +%FT%TZ) $(cat /proc/loadavg)" >> $D/load.log; sleep 15; done ) & LOG=$!
trap "kill $LOG; $PY -m bench.cluster down --name acc9f || true; $PY -m bench.cluster down --name acc9fu || true; $PY -m bench.cluster down --name acc9fp3 || true" EXIT
export DETR_CLUSTER_NAME=acc9f
$PY -m bench.cluster up --name acc9f --hosts 4 --rate 100mbit --cpu-quota 0.45
$PY -m bench.sweep --launcher cluster --rates 100mbit --seqs 128,512 --predict --out $D/equal.jsonl -- --boundary replicate,tp --warmup 1 --iters 5
$PY -m bench.sweep --launcher cluster --rates 100mbit --seqs 128,512 --strategies auto --out $D/equal.jsonl -- --warmup 1 --iters 5
$PY -m bench.sweep --launcher cluster --rates 10mbit --seqs 128,512 --predict --out $D/equal.jsonl -- --boundary replicate,tp --warmup 1 --iters 3
$PY -m bench.sweep --launcher cluster --rates 10mbit --seqs 128,512 --strategies auto --out $D/equal.jsonl -- --warmup 1 --iters 3
$PY -m bench.cluster down --name acc9f
export DETR_CLUSTER_NAME=acc9fu
$PY -m bench.cluster up --name acc9fu --hosts 4 --rate 100mbit --cpu-quotas 0.2,0.3,0.45,0.45
$PY -m bench.sweep --launcher cluster --rates 100mbit --seqs 128 --predict --out $D/unequal.jsonl -- --boundary replicate,tp --warmup 1 --iters 8
$PY -m bench.sweep --launcher cluster --rates 100mbit --seqs 128 --strategies auto --out $D/unequal.jsonl -- --warmup 1 --iters 8
$PY -m bench.cluster down --name acc9fu
export DETR_CLUSTER_NAME=acc9fp3
$PY -m bench.cluster up --name acc9fp3 --hosts 3 --rate 100mbit --cpu-quota 0.45
$PY -m bench.sweep --launcher cluster --rates 100mbit --seqs 128 --predict --out $D/p3.jsonl -- --boundary replicate,tp --warmup 1 --iters 5
$PY -m bench.sweep --launcher cluster --rates 100mbit --seqs 128 --strategies auto --out $D/p3.jsonl -- --warmup 1 --iters 5
echo DONE-B
