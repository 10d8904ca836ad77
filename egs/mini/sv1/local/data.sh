#!/usr/bin/env bash
# Stage 0 of the mini recipe: generate the synthetic corpus (VoxCeleb1 layout) if it is
# not there yet, then run the real VoxCeleb1 data preparation on it.
set -euo pipefail
. ./path.sh
. ./db.sh

seed=0
corpus_conf=conf/corpus.yaml
valid_speakers=6
help_message="Usage: $0 [--seed N] [--corpus_conf conf/corpus.yaml] [--valid_speakers N]"
. utils/parse_options.sh

root=${MINI_VOX1}
stamp="${root}/.done.seed${seed}.$(md5sum < "${corpus_conf}" | cut -c1-8)"
if [ -f "${stamp}" ]; then
  echo "$0: corpus ${root} already generated (seed ${seed}), skipping" 1>&2
else
  python3 -m upmp.bin.make_mini_corpus --out "${root}" --seed "${seed}" \
    $(python3 -c 'import sys, yaml; print(" ".join(f"--{k} {v}" for k, v in yaml.safe_load(open(sys.argv[1])).items()))' "${corpus_conf}")
  touch "${stamp}"
fi
# 6 development speakers are held out as data/voxceleb1_valid (validation / calibration trials)
python3 -m upmp.bin.prepare_voxceleb1 --root "${root}" --out data --trials veri_test2.txt \
  --valid_speakers "${valid_speakers}" --seed "${seed}"
