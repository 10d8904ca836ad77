#!/usr/bin/env bash
# Kaldi's slurm.pl calling form, implemented in upmp/jobs.py:
#   slurm.pl [--config conf/slurm.conf] [--mem 4G] [--gpu N] [--num-threads K] [--max-jobs-run M] JOB=1:N log/name.JOB.log command ... JOB ...
root=$(cd "$(dirname "$(readlink -f "$0")")/../../../.." && pwd)
PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}" exec python3 -m upmp.bin.jobs --backend slurm -- "$@"
