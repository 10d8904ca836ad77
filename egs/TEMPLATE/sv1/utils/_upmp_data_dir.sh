#!/usr/bin/env bash
# Runs "python -m upmp.bin.data_dir <subcommand> ..." with the repository on PYTHONPATH.
root=$(cd "$(dirname "$(readlink -f "$0")")/../../../.." && pwd)
PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}" exec python3 -m upmp.bin.data_dir "$@"
