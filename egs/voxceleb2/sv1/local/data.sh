#!/usr/bin/env bash
# Stage 0 of the VoxCeleb2 recipe: Kaldi data dirs and trials under data/, nothing else.
# --protocol upmp (default):
#   data/voxceleb2_dev    training speakers (Vox2 dev minus the held-out ones); m4a through ffmpeg pipes
#                         (dev/aac) or the converted dev/wav tree
#   data/voxceleb2_valid  held-out dev speakers with balanced cross-session trials (model selection)
#   data/voxceleb1_test   Vox1-O (veri_test2.txt); data/voxceleb1_e, data/voxceleb1_h: Vox1-E / Vox1-H
#                         (list_test_all2.txt, list_test_hard2.txt) when present under the Vox1 root
#   data/voxceleb2_dev_sp with --speed_perturb true: voxceleb2_dev + sp0.9- / sp1.1- copies (new speakers)
# --protocol authors (the UniPool / L-TDNN authors' evaluation; other names, so both can live here):
#   data/voxceleb2_dev_all      all 5,994 Vox2 dev speakers (none held out)
#   data/voxceleb1_test_orig    validation: Vox1-O with the ORIGINAL list ${authors_trials} (37,720 trials =
#                               their trials-vox1.csv, which --authors_trials also takes)
#   data/voxceleb1_test, data/voxceleb1_e, data/voxceleb1_h   the test sets, as above
#   data/voxceleb2_dev_all_sp   with --speed_perturb true
# --convert_audio flac|wav converts the dev and validation audio once (16 kHz mono 16-bit) under
# --convert_dir in --nj parallel jobs through $train_cmd, and points their wav.scp at the files:
# online training then decodes each crop from a seekable file instead of an ffmpeg process per crop.
# Resumable: a rerun converts only the files still missing.
set -euo pipefail
. ./path.sh
. ./db.sh
. ./cmd.sh

voxceleb1_root=${VOXCELEB1}
voxceleb2_root=${VOXCELEB2}
protocol=upmp                # upmp | authors (see above)
authors_trials=veri_test.txt # --protocol authors: the original Vox1-O list (or the paper's trials-vox1.csv)
audio=auto                   # auto (dev/wav if present, else dev/aac) | m4a | wav
valid_speakers=100           # dev speakers held out for validation (of 5,994)
valid_targets_per_speaker=100
seed=0
extended=true                # Vox1-E / Vox1-H test sets when their lists are present
speed_perturb=false
speed_factors="0.9 1.0 1.1"
convert_audio=none           # none | flac | wav: convert the Vox2 audio once (see above)
convert_dir=audio/voxceleb2  # where converted files go: <dir>/<speaker>/<utt>.<format>
nj=8                         # conversion jobs
help_message="Usage: $0 [--voxceleb1_root DIR] [--voxceleb2_root DIR] [--protocol upmp|authors] [--authors_trials veri_test.txt] [--audio auto|m4a|wav] [--valid_speakers N] [--valid_targets_per_speaker N] [--seed N] [--extended true|false] [--speed_perturb true|false] [--speed_factors \"0.9 1.0 1.1\"] [--convert_audio none|flac|wav] [--convert_dir DIR] [--nj N]"
. utils/parse_options.sh
case ${convert_audio} in none|flac|wav) ;; *) echo "$0: --convert_audio must be none, flac or wav" 1>&2; exit 1 ;; esac

case ${protocol} in
  upmp)
    python3 -m upmp.bin.prepare_voxceleb2 --root "${voxceleb2_root}" --out data --audio "${audio}" \
      --valid_speakers "${valid_speakers}" --valid_targets_per_speaker "${valid_targets_per_speaker}" --seed "${seed}"
    dev=voxceleb2_dev valid=voxceleb2_valid ;;
  authors)
    python3 -m upmp.bin.prepare_voxceleb2 --root "${voxceleb2_root}" --out data --audio "${audio}" \
      --dev_name voxceleb2_dev_all
    python3 -m upmp.bin.prepare_voxceleb1 --root "${voxceleb1_root}" --out data --test_only \
      --trials "${authors_trials}" --test_name voxceleb1_test_orig
    dev=voxceleb2_dev_all valid="" ;;
  *) echo "$0: --protocol must be upmp or authors" 1>&2; exit 1 ;;
esac
if [ "${convert_audio}" != none ]; then
  for set in ${dev} ${valid}; do
    [ -f "data/${set}/wav.scp" ] || continue
    echo "$0: converting data/${set} to ${convert_audio} under ${convert_dir} (${nj} jobs; logs in ${convert_dir}/log)" 1>&2
    # shellcheck disable=SC2154
    ${train_cmd} JOB=1:"${nj}" "${convert_dir}/log/${set}.JOB.log" \
      python3 -m upmp.bin.convert_audio --data_dir "data/${set}" --out_dir "${convert_dir}" \
        --format "${convert_audio}" --job JOB --num_jobs "${nj}"
    python3 -m upmp.bin.convert_audio --data_dir "data/${set}" --out_dir "${convert_dir}" --format "${convert_audio}"
  done
fi
extended_opt=""
if "${extended}"; then extended_opt=--extended; fi
python3 -m upmp.bin.prepare_voxceleb1 --root "${voxceleb1_root}" --out data --test_only ${extended_opt}
if "${speed_perturb}"; then
  python3 -m upmp.bin.perturb_speed --factors "${speed_factors}" "data/${dev}" "data/${dev}_sp"
fi
