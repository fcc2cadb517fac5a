#!/bin/bash
w=$(grep -m1 "class wired" $1 | grep -oE "ours [0-9.]+ s" | head -1); f=$(grep -m1 "class wifi" $1 | grep -oE "ours [0-9.]+ s" | head -1); F=$(awk 'f{print $8; f=0} /^ +N +F \(MiB\)/{f=1}' $1 | head -1)
echo "wired: $w wifi: $f F=$F"
