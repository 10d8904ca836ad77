#!/usr/bin/env bash
# Kaldi's split_data.sh: utils/split_data.sh [--per-utt] data/x N -> data/x/split{N}[utt]/{1..N}
exec "$(dirname "$(readlink -f "$0")")/_upmp_data_dir.sh" split "$@"
