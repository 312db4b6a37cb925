#!/usr/bin/env bash
# Make sure Slurm's daemons and clients and munge are installed (Debian/Ubuntu: slurm-wlm, munge).
set -euo pipefail
missing=()
for exe in munged slurmctld slurmd sbatch squeue scancel srun; do
    command -v "$exe" >/dev/null || missing+=("$exe")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "test-slurm: ${missing[*]} not found; install Slurm and munge (Debian: apt-get install slurm-wlm munge) as root" >&2
    exit 1
fi
echo "test-slurm: installing slurm-wlm and munge (missing: ${missing[*]})"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
