"""The one record of "this stage's output is complete and up to date": a done-record beside the output.

    record = done_path(scores)                         # <scores>.done
    verdict = is_done(record, inputs, options, outputs)
    if verdict:                                        # complete: reuse the outputs
        logger.info("%s is up to date, skipping", scores)
    else:                                              # stale: verdict.reason says why, for the log line
        seen = snapshot(inputs)                        # before the stage reads its inputs
        ...write the outputs...
        write_done(record, inputs, options, outputs, seen=seen)  # last, atomically

A record (JSON) holds each input's stamp (size and mtime_ns of the file it names, or its SHA-256 for
the inputs in `hashed`; null for an input that does not exist), the options that shape the outputs
(JSON values), and each output's stamp when the record was written. The outputs are complete and up to
date when the record exists, names the same inputs, options and outputs, every input's stamp is the
one recorded and every output is still there with the stamp recorded: a changed, new or removed input,
a changed option, a missing, truncated or rewritten output (a run interrupted after the record
was written and the outputs rewritten, or a record written before its outputs) make them stale.
Stamps compare for equality, not age: an input older than before (a file restored from a backup)
counts as changed too. Symbolic links are followed (an <exp>_avg's model.pt is the averaged model).
A rerun leaves the old record in place until its new outputs are written: the outputs it rewrote before
stopping no longer match it (their stamps), those it did not are still what the record describes, and
the input or option that made them stale still does; nothing written is removed for the record's sake.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, Iterable, NamedTuple, Optional, Union

from upmp.fileio import atomic_write_text, file_sha256

PathLike = Union[str, "os.PathLike[str]"]
SUFFIX = ".done"
logger = logging.getLogger(__name__)


class Verdict(NamedTuple):
    """is_done's answer: complete (true), or stale with the reason (for the log line)."""
    complete: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.complete


def done_path(output: PathLike) -> Path:
    """The record of the stage whose main output is `output`: <output>.done."""
    return Path(f"{output}{SUFFIX}")


def stamp(path: PathLike, hashed: bool = False) -> Optional[Union[list, str]]:
    """[size, mtime_ns] of the file `path` names (its SHA-256 hex digest when hashed); None when
    there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if not hashed:
        return [st.st_size, st.st_mtime_ns]
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)  # a file as it is now: hashed once per process
    if key not in _HASHES:
        _HASHES[key] = file_sha256(path)
    return _HASHES[key]


_HASHES: Dict[tuple, str] = {}  # stage 4 stamps the training utt2spk for every system, three times each


def _names(paths: Iterable[PathLike]) -> list:
    """The paths as the record names them: normalised ('./a' is 'a'), each once, in their order."""
    return list(dict.fromkeys(os.path.normpath(str(p)) for p in paths))


def _stamps(paths: Iterable[PathLike], hashed: Iterable[PathLike] = ()) -> Dict[str, object]:
    by_content = set(_names(hashed))
    return {p: stamp(p, p in by_content) for p in _names(paths)}


def is_done(record: PathLike, inputs: Iterable[PathLike], options: dict, outputs: Iterable[PathLike],
            hashed: Iterable[PathLike] = ()) -> Verdict:
    """Whether the outputs named in `record` are complete and up to date for these inputs and options
    (module docstring). `hashed`: inputs compared by content (a subset of inputs)."""
    try:
        old = json.loads(Path(record).read_text())
    except FileNotFoundError:
        return Verdict(False, f"no record {record}")
    except (OSError, ValueError):
        return Verdict(False, f"{record} is unreadable")
    if not isinstance(old, dict):
        return Verdict(False, f"{record} is unreadable")
    outputs = _names(outputs)
    recorded = old.get("outputs") or {}
    if sorted(recorded) != sorted(outputs):
        return Verdict(False, f"{record} names other outputs")
    for p in outputs:
        now = stamp(p)
        if now is None:
            return Verdict(False, f"{p} is missing")
        if now != recorded[p]:
            return Verdict(False, f"{p} changed after {record} was written")
    options = json.loads(json.dumps(options))  # as it reads back (tuples become lists)
    recorded = old.get("options") or {}
    for k in sorted(set(options) | set(recorded)):
        if options.get(k) != recorded.get(k):
            return Verdict(False, f"option {k}: {recorded.get(k)!r} in {record}, now {options.get(k)!r}")
    inputs = _names(inputs)
    recorded = old.get("inputs") or {}
    for p in inputs:
        if p not in recorded:
            return Verdict(False, f"input {p} is not in {record}")
    for p in recorded:
        if p not in inputs:
            return Verdict(False, f"input {p} of {record} is no longer an input")
    by_content = set(_names(hashed))
    for p in inputs:
        if stamp(p, p in by_content) != recorded[p]:
            return Verdict(False, f"{p} {'is missing' if not os.path.exists(p) else 'changed'} since {record}")
    return Verdict(True)


def snapshot(inputs: Iterable[PathLike], hashed: Iterable[PathLike] = ()) -> Dict[str, object]:
    """The inputs' stamps now: take them before the stage reads its inputs and hand them to write_done
    (seen=), so that an input changed while the stage ran is not recorded as the one its outputs were
    made from."""
    return _stamps(inputs, hashed)


def write_done(record: PathLike, inputs: Iterable[PathLike], options: dict, outputs: Iterable[PathLike],
               hashed: Iterable[PathLike] = (), seen: Optional[Dict[str, object]] = None) -> bool:
    """Record that `outputs` (all written, each one a file) are complete for these inputs and options;
    atomically, after the outputs. `seen`: snapshot() of the inputs taken before the stage read them;
    when an input has changed since, no record is written (one warning line; the next run redoes the
    stage) and the answer is False."""
    out = _stamps(outputs)
    missing = [p for p, s in out.items() if s is None]
    if missing:
        raise FileNotFoundError(f"{record}: output {missing[0]} was not written")
    now = _stamps(inputs, hashed)
    if seen is not None:
        changed = [p for p in now if seen.get(p) != now[p]]
        if changed:
            logger.warning("%s changed while the stage ran: not writing %s (the next run redoes the stage)",
                           changed[0], record)
            return False
    body = {"inputs": now, "options": options, "outputs": out}
    atomic_write_text(record, json.dumps(body, indent=1, sort_keys=True) + "\n")
    return True
