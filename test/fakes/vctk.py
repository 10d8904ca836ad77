"""A fake VCTK 0.92 tree in the official layout (48 kHz flac made by sox from tones)."""
from pathlib import Path

from helpers import sox_flac

# 12 speakers (+ p315, which the protocol removes), as speaker-info.txt of VCTK 0.92 writes them
SPEAKERS = {f"p{225 + i}": ("F" if i % 2 else "M") for i in range(12)}


INFO = ("ID  AGE  GENDER  ACCENTS  REGION COMMENTS \n"
        + "".join(f"{s}  {20 + i}  {g}    English    Southern  England\n" for i, (s, g) in enumerate(SPEAKERS.items()))
        + "p315  18  M    American  New  England  (no text)\n")


PROMPTS = (1, 24, 25, 26, 27)   # 001 and 024 are dropped


def make_vctk_092(root: Path, seconds: float = 0.3, mics=("mic1", "mic2"), speakers=SPEAKERS) -> Path:
    """wav48_silence_trimmed/<spk>/<spk>_<MMM>_mic{1,2}.flac at 48 kHz + speaker-info.txt."""
    for i, spk in enumerate(list(speakers) + ["p315"]):
        for j, n in enumerate(PROMPTS):
            for k, mic in enumerate(mics):
                sox_flac(root / "wav48_silence_trimmed" / spk / f"{spk}_{n:03d}_{mic}.flac",
                         seconds + 0.01 * j, 150 + 40 * i + 200 * k, 48000, seed=100 * i + j)
    (root / "speaker-info.txt").write_text(INFO)
    return root


def expected_utts(speakers):
    return sorted(f"{s}_{n:03d}" for s in speakers for n in PROMPTS if n >= 25)

