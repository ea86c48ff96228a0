#!/bin/bash
# the planner acceptance on the expected-value cost model (run 7's commands; 8 iterations at 100 Mbit/s, was 5)
set -e
cd /work/main
PY=.venv/bin/python
D=/work/exp/run8   # copied to reports/emulated-4host-planner-run8-data afterwards
( while true; do echo "$(date -u +%FT%TZ) $(cat /proc/loadavg)" >> $D/load.log; sleep 15; done ) & LOG=$!
trap "kill $LOG; for n in acc9h acc9hu acc9hp3; do $PY -m bench.cluster down --name \$n || true; done" EXIT
export DETR_CLUSTER_NAME=acc9h
$PY -m bench.cluster up --name acc9h --hosts 4 --rate 1gbit --cpu-quota 0.45
$PY -m bench.sweep --launcher cluster --rates 1gbit --seqs 128,512 --predict --out $D/equal.jsonl -- --boundary replicate,tp --warmup 4 --iters 10
$PY -m bench.sweep --launcher cluster --rates 1gbit --seqs 128,512 --strategies auto --out $D/equal.jsonl -- --warmup 4 --iters 10
$PY -m bench.sweep --launcher cluster --rates 100mbit --seqs 128,512 --predict --out $D/equal.jsonl -- --boundary replicate,tp --warmup 1 --iters 8
$PY -m bench.sweep --launcher cluster --rates 100mbit --seqs 128,512 --strategies auto --out $D/equal.jsonl -- --warmup 1 --iters 8
$PY -m bench.sweep --launcher cluster --rates 10mbit --seqs 128,512 --predict --out $D/equal.jsonl -- --boundary replicate,tp --warmup 1 --iters 3
$PY -m bench.sweep --launcher cluster --rates 10mbit --seqs 128,512 --strategies auto --out $D/equal.jsonl -- --warmup 1 --iters 3
$PY -m bench.cluster down --name acc9h
export DETR_CLUSTER_NAME=acc9hu
$PY -m bench.cluster up --name acc9hu --hosts 4 --rate 100mbit --cpu-quotas 0.2,0.3,0.45,0.45
$PY -m bench.sweep --launcher cluster --rates 100mbit --seqs 128 --predict --out $D/unequal.jsonl -- --boundary replicate,tp --warmup 1 --iters 8
$PY -m bench.sweep --launcher cluster --rates 100mbit --seqs 128 --strategies auto --out $D/unequal.jsonl -- --warmup 1 --iters 8
$PY -m bench.cluster down --name acc9hu
export DETR_CLUSTER_NAME=acc9hp3
$PY -m bench.cluster up --name acc9hp3 --hosts 3 --rate 100mbit --cpu-quota 0.45
$PY -m bench.sweep --launcher cluster --rates 100mbit --seqs 128 --predict --out $D/p3.jsonl -- --boundary replicate,tp --warmup 1 --iters 5
$PY -m bench.cluster run -- $PY -m bench.latency --model bert-base --seq 128 --batch 1 --out $D/p3.jsonl --rate 100mbit --profile $D/p3.jsonl.profile-bert-base-100mbit-nall.json --strategies bp --boundary replicate,tp --ndiv 3 --warmup 1 --iters 5 --tag "sweep_point=latency|bert-base|seq=128|batch=1|rate=100mbit|n=all|ndiv=3"
$PY -m bench.sweep --launcher cluster --rates 100mbit --seqs 128 --strategies auto --out $D/p3.jsonl -- --warmup 1 --iters 5
echo DONE
