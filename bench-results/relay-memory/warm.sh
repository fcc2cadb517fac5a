#!/bin/bash
# warm.sh OUT ROUNDS WARM v1 v2...
OUT=$1; R=$2; W=$3; shift 3
mkdir -p $OUT
HALF="--class wired=4:100/100 --class wifi=4:30/10 --size-mib 64"
ALONE="--class wired=4:100/100 --size-mib 64"
for i in $(seq 1 $R); do
  for v in "$@"; do
    cp /tmp/ab/agent-$v /work/main/target/release/peer-agent
    /work/main/target/release/p2p-bench --out $OUT/half-$v-$i swarm $HALF --warm-up-mib $W --no-http --no-bt --no-mesh --runs 1 > $OUT/half-$v-$i.log 2>&1
    echo "half $v $i $(/tmp/ab/mixline.sh $OUT/half-$v-$i.log) $(grep -m1 -oE '[0-9.]+F' $OUT/half-$v-$i.log)"
    /work/main/target/release/p2p-bench --out $OUT/alone-$v-$i swarm $ALONE --warm-up-mib $W --no-http --no-bt --no-mesh --runs 1 > $OUT/alone-$v-$i.log 2>&1
    echo "alone $v $i $(/tmp/ab/mixline.sh $OUT/alone-$v-$i.log)"
  done
done
cp /tmp/ab/agent-base /work/main/target/release/peer-agent
