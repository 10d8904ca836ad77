#!/usr/bin/env bash
# The offline mini recipe: a synthetic VoxCeleb1-layout corpus, a tiny random-init
# WavLM (built offline), the UPMP backend, cosine and PLDA scoring with and without
# AS-norm, calibration on a held-out validation list, EER / minDCF / Cllr.
#   ./run.sh --stage 0 --stop_stage 5        (any sv.sh option can be added; see ./run.sh --help)
set -euo pipefail

./sv.sh \
  --train_set voxceleb1_dev \
  --valid_set voxceleb1_valid \
  --test_sets voxceleb1_test \
  --upstream wavlm_local \
  --tiny_upstream true \
  --storage float16 \
  --train_config conf/train_upmp.yaml \
  --scoring "cosine plda" \
  --score_norm "none asnorm" \
  --cohort_top_n 20 \
  --local_data_opts "--seed 0" \
  "$@"
