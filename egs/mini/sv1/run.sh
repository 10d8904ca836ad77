#!/usr/bin/env bash
# The offline mini recipe: a synthetic VoxCeleb1-layout corpus, the pretrained GE2E
# speaker encoder's layers (weights from the resemblyzer wheel) as the frozen upstream,
# the UPMP backend, cosine and PLDA scoring with and without AS-norm, calibration on a
# held-out validation list, EER / minDCF / Cllr.
#   ./run.sh --stage 0 --stop_stage 5                 (see ./run.sh --help for every option)
#   ./run.sh --upstream wavlm_local                   (a tiny random-init WavLM, built offline)
#   ./run.sh --stage 2 --backend "upmp ltdnn_d3net ltdnn_ecapa lap mhfa superb_ecapa xvector"   (the backend comparison)
set -euo pipefail

./sv.sh \
  --train_set voxceleb1_dev \
  --valid_set voxceleb1_valid \
  --test_sets voxceleb1_test \
  --upstream ge2e \
  --tiny_upstream true \
  --storage float16 \
  --train_config conf/train_upmp.yaml \
  --scoring "cosine plda" \
  --score_norm "none asnorm" \
  --cohort_top_n 20 \
  --local_data_opts "--seed 0" \
  "$@"
