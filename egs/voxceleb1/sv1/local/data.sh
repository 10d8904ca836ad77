#!/usr/bin/env bash
# Stage 0 of the VoxCeleb1 recipe: Kaldi data dirs and trials under data/, nothing else.
#   data/voxceleb1_dev    training speakers (Vox1 dev minus the held-out ones)
#   data/voxceleb1_valid  held-out dev speakers with balanced cross-session trials (model selection,
#                         calibration; never Vox1-O)
#   data/voxceleb1_test   Vox1-O test speakers with trials from ${trials} (cleaned veri_test2.txt)
#   data/voxceleb1_dev_sp with --speed_perturb true: voxceleb1_dev + sp0.9- / sp1.1- copies (new speakers)
# Vox1-E / Vox1-H pair development speakers: they test VoxCeleb2-trained models (egs/voxceleb2/sv1).
set -euo pipefail
. ./path.sh
. ./db.sh

voxceleb1_root=${VOXCELEB1}
trials=veri_test2.txt        # under the root; the paper's trials-vox1.csv (uncleaned, 37,720) also works
valid_speakers=40            # dev speakers held out for validation (of 1,211)
valid_targets_per_speaker=100
seed=0
speed_perturb=false
speed_factors="0.9 1.0 1.1"
help_message="Usage: $0 [--voxceleb1_root DIR] [--trials veri_test2.txt] [--valid_speakers N] [--valid_targets_per_speaker N] [--seed N] [--speed_perturb true|false] [--speed_factors \"0.9 1.0 1.1\"]"
. utils/parse_options.sh

python3 -m upmp.bin.prepare_voxceleb1 --root "${voxceleb1_root}" --out data --trials "${trials}" \
  --valid_speakers "${valid_speakers}" --valid_targets_per_speaker "${valid_targets_per_speaker}" --seed "${seed}"
if "${speed_perturb}"; then
  python3 -m upmp.bin.perturb_speed --factors "${speed_factors}" data/voxceleb1_dev data/voxceleb1_dev_sp
fi
