#!/bin/sh
# A Slurm job array: one task per shard. Each task signs its share of the archive into
# $OUT.part-K; join the parts in K order afterwards (deploy/shard/join.sh).
#
#   sbatch --array=1-64 deploy/shard/slurm-array.sh /srv/archive.mbox /srv/signed.mbox
#
#SBATCH --job-name=dkimpress-sign
#SBATCH --cpus-per-task=16
#SBATCH --output=dkimpress-%A_%a.log
set -eu
in=$1; out=$2
k=${SLURM_ARRAY_TASK_ID:?run with sbatch --array=1-N}
n=${SLURM_ARRAY_TASK_COUNT:?}
# Array indices must run 1..N (sbatch --array=1-N); the same --timestamp for every task.
exec dkimpress sign --shard "$k/$n" --timestamp "${DKIMPRESS_TIMESTAMP:?set one t= for all tasks}" \
    --threads "${SLURM_CPUS_PER_TASK:-$(nproc)}" --report json -q --config "${DKIMPRESS_CONFIG:-/etc/opendkim.conf}" \
    -o "$out.part-$k" "$in" > "$out.report-$k.json"
