#!/bin/bash
# gen.sh OUT ROUNDS TAG "args" v1 v2...
OUT=$1; R=$2; TAG=$3; ARGS=$4; shift 4
mkdir -p $OUT
for i in $(seq 1 $R); do
  for v in "$@"; do
    cp /tmp/ab/agent-$v /work/main/target/release/peer-agent
    /work/main/target/release/p2p-bench --out $OUT/$TAG-$v-$i swarm $ARGS --no-http --no-bt --no-mesh --runs 1 > $OUT/$TAG-$v-$i.log 2>&1
    echo "$TAG $v $i $(/tmp/ab/mixline.sh $OUT/$TAG-$v-$i.log) $(grep -m1 -oE '[0-9.]+F' $OUT/$TAG-$v-$i.log)"
  done
done
cp /tmp/ab/agent-base /work/main/target/release/peer-agent
