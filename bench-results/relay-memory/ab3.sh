#!/bin/bash
# ab3.sh OUT ROUNDS "swarm args" LINE v1 v2 ...
OUT=$1; R=$2; ARGS=$3; LINE=$4; shift 4
mkdir -p $OUT
for i in $(seq 1 $R); do
  for v in "$@"; do
    cp /tmp/ab/agent-$v /work/main/target/release/peer-agent
    /work/main/target/release/p2p-bench --out $OUT/$v-$i swarm $ARGS --no-http --no-bt --no-mesh --runs 1 > $OUT/$v-$i.log 2>&1
    echo "$v $i $($LINE $OUT/$v-$i.log)"
  done
done
cp /tmp/ab/agent-base /work/main/target/release/peer-agent
