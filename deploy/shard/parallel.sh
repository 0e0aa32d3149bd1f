#!/bin/sh
# Sign one big mbox (or a maildir/queue tree) as N independent runs with GNU parallel, on this
# machine or on several (`--sshlogin`, with the input and output on storage all of them see).
#
#   deploy/shard/parallel.sh N INPUT OUTPUT [sign options...]
#   SSHLOGIN=host1,host2 deploy/shard/parallel.sh 64 /srv/archive.mbox /srv/signed.mbox --config /etc/opendkim.conf
#
# Run K writes OUTPUT.part-K (an mbox) or into OUTPUT/ (a directory input: every run writes its
# own files into the same tree). The parts are then joined in K order, which gives the bytes
# one run would have written; each run's JSON report goes to OUTPUT.reports.jsonl and the sum
# to OUTPUT.report.json. Pass --timestamp UNIX so that every run signs with the same t=.
set -eu
[ $# -ge 3 ] || { sed -n '2,12p' "$0" >&2; exit 64; }
n=$1; in=$2; out=$3; shift 3
dkimpress=${DKIMPRESS:-dkimpress}
login=${SSHLOGIN:+--sshlogin $SSHLOGIN}
if [ -d "$in" ]; then target=$out; else target="$out.part-{}"; fi
# shellcheck disable=SC2086 # $login is empty or two words on purpose
seq 1 "$n" | parallel $login --halt now,fail=1 --line-buffer \
    "$dkimpress" sign --shard "{}/$n" --report json -q -o "$target" "$@" "$in" > "$out.reports.jsonl"
if [ ! -d "$in" ]; then
    i=1; : > "$out.tmp"
    while [ "$i" -le "$n" ]; do cat "$out.part-$i" >> "$out.tmp"; rm -f "$out.part-$i"; i=$((i + 1)); done
    mv "$out.tmp" "$out"
fi
jq -s '{messages: (map(.messages) | add), signed: (map(.signed) | add),
        passed_through: (map(.passed_through) | add), bytes: (map(.bytes) | add),
        problems: (map(.problems) | add), shards: length}' "$out.reports.jsonl" > "$out.report.json"
cat "$out.report.json"
