#!/usr/bin/env bash
# Kaldi's utt2spk_to_spk2utt.pl: utils/utt2spk_to_spk2utt.pl < utt2spk > spk2utt (also takes a file argument)
if [ $# -gt 0 ]; then exec < "$1"; fi
exec "$(dirname "$(readlink -f "$0")")/_upmp_data_dir.sh" spk2utt
