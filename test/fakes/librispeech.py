"""A fake LibriSpeech tree in the official layout (flac made by sox from tones)."""
from pathlib import Path

from helpers import sox_flac

HEADER = """; Some pipe(|) separated metadata about all LibriVox readers, whose work was used
; in the corpus.
;
;ID  |SEX| SUBSET           |MINUTES| NAME
"""


# speaker: (sex, subset); train-clean-360 and test-other are absent from the fake tree
SPEAKERS = {"19": ("F", "train-clean-100"), "26": ("M", "train-clean-100"), "20": ("F", "train-other-500"),
            "60": ("M", "train-other-500"), "84": ("F", "dev-clean"), "174": ("M", "dev-clean"),
            "116": ("M", "dev-other"), "61": ("M", "test-clean"), "121": ("F", "test-clean"),
            "237": ("F", "test-clean")}


def speakers_txt(speakers) -> str:
    # speaker 60's name has a '|' in it, as in the real file
    return HEADER + "".join(f"{s:<5}| {g} | {sub:<16} | 25.03 | {'|CBW|Simon' if s == '60' else 'Reader ' + s}\n"
                            for s, (g, sub) in speakers.items())


def make_librispeech(root: Path) -> Path:
    """<subset>/<spk>/<chapter>/<spk>-<chapter>-<nnnn>.flac (2 chapters x 2 utterances) + SPEAKERS.TXT."""
    for i, (spk, (_, subset)) in enumerate(SPEAKERS.items()):
        for c, chapter in enumerate((1000 + i, 2000 + i)):
            for n in range(2):
                sox_flac(root / subset / spk / str(chapter) / f"{spk}-{chapter}-{n:04d}.flac",
                         0.3 + 0.1 * n, 200 + 50 * i + 10 * c, 16000, seed=10 * i + 2 * c + n)
    (root / "SPEAKERS.TXT").write_text(speakers_txt(SPEAKERS))
    return root

