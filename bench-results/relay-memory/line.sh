#!/bin/bash
awk 'f{print "t="$4" F="$8" cpu="$10" user="$11" aria2_user="$12" tail="$14; f=0} /^ +N +F \(MiB\)/{f=1}' $1
