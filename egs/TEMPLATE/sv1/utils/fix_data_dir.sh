#!/usr/bin/env bash
# Kaldi's fix_data_dir.sh: sort the files and keep utterances present in all of them.
exec "$(dirname "$(readlink -f "$0")")/_upmp_data_dir.sh" fix "$@"
