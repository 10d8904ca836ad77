#!/usr/bin/env bash
# Stage 0 of the VoxCeleb1 recipe: Kaldi data dirs and trials under data/, nothing else.
# --protocol upmp (default):
#   data/voxceleb1_dev    training speakers (Vox1 dev minus the held-out ones)
#   data/voxceleb1_valid  held-out dev speakers with balanced cross-session trials (model selection,
#                         calibration; never Vox1-O)
#   data/voxceleb1_test   Vox1-O test speakers with trials from ${trials} (cleaned veri_test2.txt)
#   data/voxceleb1_dev_sp with --speed_perturb true: voxceleb1_dev + sp0.9- / sp1.1- copies (new speakers)
# --protocol authors (the UniPool / L-TDNN authors' evaluation; other names, so both can live here):
#   data/voxceleb1_dev_all      all 1,211 Vox1 dev speakers (none held out)
#   data/voxceleb1_test_orig    Vox1-O with the ORIGINAL list ${authors_trials} (37,720 trials = their
#                               trials-vox1.csv, which --authors_trials also takes)
#   data/voxceleb2_test_valid   validation: balanced trials over the 118 Vox2 test speakers by the rules
#                               of their trials-vox2.csv script (--valid_trials, --seed), from
#                               --voxceleb2_root's test/aac (vox2_test_aac.zip unzipped into test/) or test/wav
#   data/voxceleb1_dev_all_sp   with --speed_perturb true
# Vox1-E / Vox1-H pair development speakers: they test VoxCeleb2-trained models (egs/voxceleb2/sv1).
set -euo pipefail
. ./path.sh
. ./db.sh

voxceleb1_root=${VOXCELEB1}
voxceleb2_root=${VOXCELEB2}  # --protocol authors only: the Vox2 test audio
protocol=upmp                # upmp | authors (see above)
trials=veri_test2.txt        # under the root; the paper's trials-vox1.csv (uncleaned, 37,720) also works
authors_trials=veri_test.txt # --protocol authors: the original Vox1-O list (or the paper's trials-vox1.csv)
valid_speakers=40            # dev speakers held out for validation (of 1,211)
valid_targets_per_speaker=100
valid_trials=64000           # --protocol authors: about this many Vox2 test trials (the authors' size)
seed=0
speed_perturb=false
speed_factors="0.9 1.0 1.1"
help_message="Usage: $0 [--voxceleb1_root DIR] [--protocol upmp|authors] [--voxceleb2_root DIR] [--trials veri_test2.txt] [--authors_trials veri_test.txt] [--valid_speakers N] [--valid_targets_per_speaker N] [--valid_trials N] [--seed N] [--speed_perturb true|false] [--speed_factors \"0.9 1.0 1.1\"]"
. utils/parse_options.sh

case ${protocol} in
  upmp)
    python3 -m upmp.bin.prepare_voxceleb1 --root "${voxceleb1_root}" --out data --trials "${trials}" \
      --valid_speakers "${valid_speakers}" --valid_targets_per_speaker "${valid_targets_per_speaker}" --seed "${seed}"
    dev=voxceleb1_dev ;;
  authors)
    python3 -m upmp.bin.prepare_voxceleb2 --root "${voxceleb2_root}" --out data --test_valid \
      --valid_name voxceleb2_test_valid --valid_trials "${valid_trials}" --seed "${seed}"
    python3 -m upmp.bin.prepare_voxceleb1 --root "${voxceleb1_root}" --out data --trials "${authors_trials}" \
      --dev_name voxceleb1_dev_all --test_name voxceleb1_test_orig
    dev=voxceleb1_dev_all ;;
  *) echo "$0: --protocol must be upmp or authors" 1>&2; exit 1 ;;
esac
if "${speed_perturb}"; then
  python3 -m upmp.bin.perturb_speed --factors "${speed_factors}" "data/${dev}" "data/${dev}_sp"
fi
