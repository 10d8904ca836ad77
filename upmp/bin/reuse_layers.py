"""Plan stage 1 for a set: reuse layer stacks already extracted for other sets, list the rest.

    python -m upmp.bin.reuse_layers --data_dir data/voxceleb1_h --out_dir dump/wavlm/voxceleb1_h \
        --from dump/wavlm/voxceleb1_e dump/wavlm/voxceleb1_test

Test lists often share utterances (Vox1-O and Vox1-H lie inside Vox1-E). An utterance is reused
when another set's complete dump has a stack for the same id made from the same audio (same
wav.scp entry and segment) with the same upstream and storage. Writes:
    <out_dir>/reused.scp     scp lines pointing into the other sets' arks (possibly empty)
    <out_dir>/todo/          Kaldi data dir of the utterances still to extract (absent when none)
and prints the number of utterances to extract.
"""
from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from upmp.bin.common import fail, setup_logging
from upmp.data.kaldi_dir import DataDir, DataDirError, read_table, write_table
from upmp.upstream.layer_stack import LayerStackMeta

logger = logging.getLogger("reuse_layers")


def audio_key(data: DataDir, utt: str) -> str:
    entry, segment = data.wav_entry(utt)
    return entry if segment is None else f"{entry} {segment.start} {segment.end}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out_dir", required=True)
    p.add_argument("--from", dest="sources", nargs="*", default=[],
                   help="dump dirs of other sets (<dump>/<set>, with data/<set> beside the data dir)")
    p.add_argument("--upstream", required=True, help="the upstream of this extraction (must match)")
    p.add_argument("--storage", required=True)
    args = p.parse_args(argv)
    setup_logging()
    out = Path(args.out_dir)
    try:
        data = DataDir.load(args.data_dir)
        wanted = {u: audio_key(data, u) for u in data.utts}
        reused, meta_from = {}, None
        for src in map(Path, args.sources):
            src_data = Path(args.data_dir).parent / src.name
            if src.resolve() == out.resolve() or not (src / "layers.scp").is_file() \
                    or not (src / "layer_stack.json").is_file() or not src_data.is_dir():
                continue
            meta = LayerStackMeta.read(str(src))
            if (meta.upstream, meta.storage) != (args.upstream, args.storage):
                continue
            scp = read_table(src / "layers.scp")
            if len(scp) != len(read_table(src_data / "utt2spk")):
                continue  # an incomplete dump
            other = DataDir.load(src_data)
            for utt, entry in scp.items():
                if utt in wanted and utt not in reused and utt in other.utt2spk and audio_key(other, utt) == wanted[utt]:
                    reused[utt] = entry
                    meta_from = src
        out.mkdir(parents=True, exist_ok=True)
        write_table(out / "reused.scp", reused)
        if reused:
            shutil.copy(meta_from / "layer_stack.json", out / "layer_stack.json")
        todo = [u for u in data.utts if u not in reused]
        if (out / "todo").exists():
            shutil.rmtree(out / "todo")
        if todo:
            data.subset(todo).write(out / "todo")
    except (DataDirError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    logger.info("%s: %d of %d utterances reused from other sets, %d to extract", args.data_dir, len(reused),
                len(wanted), len(todo))
    print(len(todo))


if __name__ == "__main__":
    main()
