#!/bin/sh
# Joins the N parts of a sharded mbox run in K order and sums their JSON reports.
#   deploy/shard/join.sh N OUTPUT        (reads OUTPUT.part-1..N and OUTPUT.report-1..N.json)
set -eu
n=$1; out=$2
i=1; : > "$out.tmp"
while [ "$i" -le "$n" ]; do cat "$out.part-$i" >> "$out.tmp"; i=$((i + 1)); done
mv "$out.tmp" "$out"
i=1; while [ "$i" -le "$n" ]; do cat "$out.report-$i.json"; i=$((i + 1)); done |
    jq -s '{messages: (map(.messages) | add), signed: (map(.signed) | add),
            passed_through: (map(.passed_through) | add), bytes: (map(.bytes) | add),
            problems: (map(.problems) | add), shards: length}'
