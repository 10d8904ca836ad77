# Corpus roots. Set them to where your downloads live (or pass --<corpus>_root to run.sh).
VCTK="${VCTK:-downloads/VCTK-Corpus}"
LIBRISPEECH="${LIBRISPEECH:-downloads/LibriSpeech}"
VOXCELEB1="${VOXCELEB1:-downloads/VoxCeleb1}"
VOXCELEB2="${VOXCELEB2:-downloads/VoxCeleb2}"
MUSAN="${MUSAN:-downloads/musan}"
RIRS="${RIRS:-downloads/RIRS_NOISES}"
# The mini recipe's synthetic corpus (VoxCeleb1 layout), generated offline by its stage 0.
MINI_VOX1="${MINI_VOX1:-downloads/mini_vox1}"
