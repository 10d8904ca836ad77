"""LibriSpeech corpus tree -> Kaldi data dirs <out>/librispeech_{train,valid,test} (+ trials), the paper's protocol.

    python -m upmp.bin.prepare_librispeech --root /data/LibriSpeech --out data
        [--protocol_dir DIR] [--protocol_cache DIR] [--protocol_url URL|none] [--seed 0]

train = train-clean-100 + train-clean-360 + train-other-500, valid = dev-clean + dev-other,
test = test-clean + test-other. Trials: --protocol_dir, else a download of the paper's lists into
--protocol_cache, else regenerated with the same rules from --seed.
"""
from __future__ import annotations

import argparse

from upmp.bin.common import add_protocol_args, fail, protocol_kwargs, setup_logging
from upmp.data.kaldi_dir import DataDirError
from upmp.data.librispeech import prepare_librispeech


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="LibriSpeech root holding the subset folders and SPEAKERS.TXT")
    p.add_argument("--out", required=True, help="parent of the data dirs (usually data)")
    add_protocol_args(p)
    args = p.parse_args(argv)
    setup_logging()
    try:
        prepare_librispeech(args.root, args.out, **protocol_kwargs(args))
    except DataDirError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
