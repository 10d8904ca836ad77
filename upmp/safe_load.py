"""Torch files are data: the one check that a checkpoint holds only tensors and plain data.

    obj = load_torch_data(path, expected="a upmp model", if_refused="...")   # weights_only=True
    check_torch_data(path, ...)     # the same check, tensors memory-mapped (cheap): before a file
                                    # is handed to a loader we do not control

`torch.load(weights_only=True)` unpickles tensors, str, int, float, bool, None, lists, tuples and
dicts, and refuses any other global a pickle names (os.system, a class of some module): such a
file is refused with one line, before anything else reads it. S3PRL's builders (distiller,
mockingjay, ...) call `torch.load(weights_only=False)`, which runs whatever the pickle names, so
every checkpoint upmp hands to S3PRL or transformers goes through `check_checkpoint` first.

One class beyond plain data is allowed: `argparse.Namespace` (attributes only, no code runs when
it is rebuilt), in which S3PRL's pretraining runner (`Args`) and fairseq (`args`) store their
command line in real checkpoints.
"""
from __future__ import annotations

import argparse
import pickle
import re
import shlex
from pathlib import Path
from typing import Any, List, Optional, Sequence, Type

from upmp.errors import ModelFileError, UpmpError

ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive (torch >= 1.6)
PICKLE_MAGIC = b"\x80"     # the legacy format: a pickle (protocol >= 2)
SAFE_GLOBALS = [argparse.Namespace]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")  # torch.save'd weights in a transformers / S3PRL dir


def _refusal_reason(e: Exception) -> str:
    """The global torch refused ('GLOBAL posix.system'), else its one-line detail."""
    text = str(e)
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return f"it names {m.group(0)}"
    detail = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Weights only load failed")
              and "weights_only" not in ln and "torch.load" not in ln]
    return detail[0] if detail else "not loadable with weights_only=True"


def load_torch_data(path, expected: str, if_refused: str, error: Type[UpmpError] = ModelFileError,
                    map_location="cpu", mmap: bool = False, zip_only: bool = False, extra_globals: Sequence = ()) -> Any:
    """torch.load(path, weights_only=True); every way the file can fail is one `error` line naming it:
    missing, empty, not a torch file, truncated / corrupt, or refused (Python objects beyond tensors
    and plain data: `if_refused` says what to do). mmap: tensors stay on disk (zip archives only).
    zip_only: the legacy pickle format is refused too (upmp's own files are zip archives).
    extra_globals: more globals this kind of file needs (safe_globals entries: an object, or
    (object, "module.name") for a name another library version writes), allowed for this load only."""
    import torch
    p = Path(path)
    if not p.is_file():
        raise error(f"{path}: not found; expected {expected}")
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror}); expected {expected}") from None
    if not head:
        raise error(f"{path}: an empty file; expected {expected}")
    if head != ZIP_MAGIC and (zip_only or head[:1] != PICKLE_MAGIC):
        what = "not a torch zip archive (random bytes, text or a legacy pickle)" if zip_only else \
            "not a torch file (random bytes or text)"
        raise error(f"{path}: {what}; expected {expected}")
    try:
        with torch.serialization.safe_globals([*SAFE_GLOBALS, *extra_globals]):
            return torch.load(p, map_location=map_location, weights_only=True, mmap=mmap and head == ZIP_MAGIC)
    except pickle.UnpicklingError as e:
        if not re.search(r"GLOBAL|[Uu]nsupported", str(e)):  # e.g. 'pickle data was truncated'
            raise error(f"{path}: truncated or corrupt torch file ({_refusal_reason(e)}); expected {expected}") from None
        raise error(f"{path}: refused: holds Python objects beyond tensors and plain data "
                    f"({_refusal_reason(e)}); loading it could run code; {if_refused}") from None
    except Exception as e:  # torch's zip / pickle readers on a truncated or corrupt file: many types, OSError too
        detail = (str(e).splitlines() or [type(e).__name__])[0] or type(e).__name__
        raise error(f"{path}: truncated or corrupt torch archive ({detail}); expected {expected}") from None


def check_torch_data(path, expected: str, if_refused: str, error: Type[UpmpError] = ModelFileError) -> None:
    """load_torch_data without keeping the result (tensors memory-mapped: fast for large files)."""
    load_torch_data(path, expected, if_refused, error, mmap=True)


def pickle_files(path) -> List[Path]:
    """The files of a checkpoint that a loader may unpickle: the file itself, or in a directory
    (a transformers save_pretrained dir) every *.bin / *.pt / *.pth / *.ckpt; safetensors and
    JSON files cannot hold code."""
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in PICKLE_SUFFIXES)
    return [p]


def resave_hint(path) -> str:
    """What to do with a refused checkpoint of one's own: a one-line re-save, or safetensors."""
    q = shlex.quote(str(path))
    return ("if you trust its source, keep only its tensors and plain data: python -c \"import sys, torch; "
            "c = torch.load(sys.argv[1], weights_only=False); torch.save({k: v for k, v in c.items() if "
            f"isinstance(v, (dict, list, str, int, float, torch.Tensor))}}, sys.argv[2])\" {q} "
            f"{shlex.quote(str(path) + '.data.pt')} "
            "and use that file; or use --upstream hf:<save_pretrained dir> with safetensors weights")


def is_torch_file(path) -> bool:
    """A file named like torch weights, or starting as torch.save writes (zip archive or pickle)."""
    p = Path(path)
    if not p.is_file():
        return False
    if p.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with open(p, "rb") as f:
        head = f.read(4)
    return head == ZIP_MAGIC or head[:1] == PICKLE_MAGIC


def safetensors_hint(path) -> str:
    """What to do with a refused weights file of a transformers directory: convert it to safetensors."""
    q, out = shlex.quote(str(path)), shlex.quote(str(Path(path).with_name("model.safetensors")))
    return ("if you trust its source, convert it to safetensors (transformers then loads that): python -c \"import sys, "
            "torch, safetensors.torch as st; st.save_file(torch.load(sys.argv[1], weights_only=False), sys.argv[2])\" "
            f"{q} {out}, then remove {q} (a file that holds no weights, e.g. training_args.bin, can just be removed)")


def check_checkpoint(path, expected: str, if_refused: Optional[str] = None,
                     error: Type[UpmpError] = ModelFileError) -> None:
    """check_torch_data on every file of pickle_files(path); if_refused defaults to resave_hint
    (safetensors_hint in a directory)."""
    for f in pickle_files(path):
        hint = if_refused or (safetensors_hint(f) if Path(path).is_dir() else resave_hint(f))
        check_torch_data(f, expected, hint, error)

