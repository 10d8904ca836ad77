"""Kaldi data directories: wav.scp, utt2spk, spk2utt, segments, utt2dur, spk2gender.

Semantics follow Kaldi's utils/ (validate_data_dir.sh --no-text --no-feats,
split_data.sh, fix_data_dir.sh, utt2spk_to_spk2utt.pl): every file is text, one
record per line, sorted by the first field in C-locale (byte) order, unique keys.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from upmp.errors import DataDirError  # noqa: F401  (re-exported)
from upmp.fileio import atomic_write_text

PathLike = Union[str, os.PathLike]


def c_sort_key(key: str) -> bytes:
    """Sort key equal to `LC_ALL=C sort` on the first field."""
    return key.encode("utf-8")


def read_table(path: PathLike, min_fields: int = 2, max_fields: Optional[int] = 2,
               ) -> Dict[str, str]:
    """Read a Kaldi `<key> <value...>` file into an insertion-ordered dict.

    `value` is the rest of the line after the first run of whitespace (so
    wav.scp pipes keep their spaces). Raises DataDirError naming file and line
    for empty lines, too few/many fields and duplicate keys.
    """
    table: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            parts = line.split(None, 1)
            where = f"{path}:{lineno}"
            if not parts:
                raise DataDirError(f"{where}: empty line")
            nfields = len(line.split())
            if nfields < min_fields:
                raise DataDirError(f"{where}: expected at least {min_fields} fields, got {nfields}: {line!r}")
            if max_fields is not None and nfields > max_fields:
                raise DataDirError(f"{where}: expected at most {max_fields} fields, got {nfields}: {line!r}")
            key = parts[0]
            if key in table:
                raise DataDirError(f"{where}: duplicate key {key!r}")
            table[key] = parts[1].strip() if len(parts) > 1 else ""
    return table


def write_table(path: PathLike, table: Union[Mapping[str, str], Iterable[Tuple[str, str]]],
                sort: bool = True) -> None:
    """Write `<key> <value>` lines atomically, C-sorted by key unless sort=False."""
    items = list(table.items()) if isinstance(table, Mapping) else list(table)
    if sort:
        items.sort(key=lambda kv: c_sort_key(kv[0]))
    atomic_write_text(path, "".join(f"{k} {v}\n" for k, v in items))


def check_sorted_unique(path: PathLike, keys: Sequence[str]) -> None:
    """Raise if `keys` (the first fields of `path`, in file order) are not C-sorted and unique."""
    for i in range(1, len(keys)):
        a, b = c_sort_key(keys[i - 1]), c_sort_key(keys[i])
        if a >= b:
            problem = "duplicate key" if a == b else "not sorted (LC_ALL=C)"
            raise DataDirError(f"{path}:{i + 1}: {problem}: {keys[i - 1]!r} then {keys[i]!r}")


def utt2spk_to_spk2utt(utt2spk: Mapping[str, str]) -> Dict[str, List[str]]:
    """Invert utt2spk; utterance lists keep utt2spk's order, speakers are C-sorted."""
    spk2utt: Dict[str, List[str]] = {}
    for utt, spk in utt2spk.items():
        spk2utt.setdefault(spk, []).append(utt)
    return {s: spk2utt[s] for s in sorted(spk2utt, key=c_sort_key)}


@dataclass
class Segment:
    reco: str
    start: float
    end: float


@dataclass
class DataDir:
    """In-memory Kaldi data dir. `wav_scp` is keyed by utterance, or by recording
    when `segments` is present."""

    wav_scp: Dict[str, str]
    utt2spk: Dict[str, str]
    segments: Optional[Dict[str, Segment]] = None
    utt2dur: Optional[Dict[str, float]] = None
    spk2gender: Optional[Dict[str, str]] = None   # speaker -> m | f
    extra: Dict[str, Dict[str, str]] = field(default_factory=dict)

    @property
    def utts(self) -> List[str]:
        return list(self.utt2spk)

    @property
    def spk2utt(self) -> Dict[str, List[str]]:
        return utt2spk_to_spk2utt(self.utt2spk)

    def wav_entry(self, utt: str) -> Tuple[str, Optional[Segment]]:
        """(wav.scp value, segment or None) for an utterance."""
        if self.segments is not None:
            seg = self.segments[utt]
            return self.wav_scp[seg.reco], seg
        return self.wav_scp[utt], None

    @classmethod
    def load(cls, directory: PathLike, validate: bool = True) -> "DataDir":
        d = Path(directory)
        if not d.is_dir():
            raise DataDirError(f"{d}: not a directory")
        for name in ("wav.scp", "utt2spk"):
            if not (d / name).is_file():
                raise DataDirError(f"{d / name}: missing (required in a Kaldi data dir)")
        tables = validate_data_dir(d) if validate else read_tables(d)  # each file read once
        wav_scp, utt2spk = tables["wav.scp"], tables["utt2spk"]
        segments = None
        if "segments" in tables:
            segments = {u: parse_segment(d / "segments", i, v) for i, (u, v) in enumerate(tables["segments"].items(), 1)}
        utt2dur = None
        if "utt2dur" in tables:
            utt2dur = {u: parse_positive(d / "utt2dur", i, v) for i, (u, v) in enumerate(tables["utt2dur"].items(), 1)}
        spk2gender = tables.get("spk2gender")
        return cls(wav_scp, utt2spk, segments, utt2dur, spk2gender)

    def write(self, directory: PathLike) -> None:
        """Write sorted files (and spk2utt derived from utt2spk)."""
        d = Path(directory)
        if self.spk2gender is not None and set(self.utt2spk.values()) - set(self.spk2gender):
            missing = sorted(set(self.utt2spk.values()) - set(self.spk2gender), key=c_sort_key)
            raise DataDirError(f"{d / 'spk2gender'}: no gender for speaker {missing[0]!r} ({len(missing)} in all)")
        d.mkdir(parents=True, exist_ok=True)
        write_table(d / "wav.scp", self.wav_scp)
        write_table(d / "utt2spk", self.utt2spk)
        write_table(d / "spk2utt", {s: " ".join(sorted(u, key=c_sort_key))
                                    for s, u in self.spk2utt.items()})
        if self.segments is not None:
            write_table(d / "segments", {u: f"{s.reco} {s.start:.3f} {s.end:.3f}"
                                         for u, s in self.segments.items()})
        if self.utt2dur is not None:
            write_table(d / "utt2dur", {u: f"{v:.3f}" for u, v in self.utt2dur.items()})
        if self.spk2gender is not None:
            write_table(d / "spk2gender", {s: self.spk2gender[s] for s in self.spk2utt})

    def subset(self, utts: Iterable[str]) -> "DataDir":
        keep = [u for u in utts if u in self.utt2spk]
        utt2spk = {u: self.utt2spk[u] for u in keep}
        if self.segments is not None:
            segments = {u: self.segments[u] for u in keep}
            recos = {s.reco for s in segments.values()}
            wav_scp = {r: v for r, v in self.wav_scp.items() if r in recos}
        else:
            segments = None
            wav_scp = {u: self.wav_scp[u] for u in keep}
        utt2dur = None if self.utt2dur is None else {u: self.utt2dur[u] for u in keep}
        spks = set(utt2spk.values())
        spk2gender = None if self.spk2gender is None else {
            s: g for s, g in self.spk2gender.items() if s in spks}
        return DataDir(wav_scp, utt2spk, segments, utt2dur, spk2gender)


def parse_segment(path: Path, lineno: int, value: str) -> Segment:
    reco, start, end = value.split()
    try:
        s, e = float(start), float(end)
    except ValueError:
        raise DataDirError(f"{path}:{lineno}: start/end times are not numbers: {value!r}") from None
    if s < 0 or (e != -1 and e <= s):
        raise DataDirError(f"{path}:{lineno}: bad segment times {start} {end} (need 0 <= start < end)")
    return Segment(reco, s, e)


def parse_positive(path: Path, lineno: int, value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise DataDirError(f"{path}:{lineno}: not a number: {value!r}") from None
    if not v > 0:
        raise DataDirError(f"{path}:{lineno}: must be positive, got {value}")
    return v


def speaker_sort_violation(utt2spk: Mapping[str, str]) -> Optional[str]:
    """Kaldi's rule that utterances sort the same by id as by (speaker, id): the first utterance
    (in id order) where the two orders differ, or None."""
    by_utt = sorted(utt2spk, key=c_sort_key)
    by_spk = sorted(utt2spk, key=lambda u: (c_sort_key(utt2spk[u]), c_sort_key(u)))
    return next((a for a, b in zip(by_utt, by_spk) if a != b), None)


TABLE_FIELDS = {"wav.scp": (2, None), "utt2spk": (2, 2), "spk2utt": (2, None), "segments": (4, 4),
                "utt2dur": (2, 2), "spk2gender": (2, 2)}


def read_tables(directory: PathLike) -> Dict[str, Dict[str, str]]:
    """The data dir's files that exist, as {file name: table} (read_table's checks applied)."""
    d = Path(directory)
    return {name: read_table(d / name, lo, hi) for name, (lo, hi) in TABLE_FIELDS.items() if (d / name).is_file()}


def validate_data_dir(directory: PathLike, spk_sort: bool = True) -> Dict[str, Dict[str, str]]:
    """Kaldi's validate_data_dir.sh --no-text --no-feats, raising DataDirError.

    Checks: required files, one record per line, C-sorted unique keys, utt2spk
    and spk2utt agree, utt2spk also sorted when ordered by speaker (speaker ids
    must prefix utterance ids; disable with spk_sort=False as --no-spk-sort),
    wav.scp/segments cover exactly the utterances, utt2dur keys and values,
    spk2gender (m|f) for exactly the speakers. Returns the tables it read (read_tables).
    """
    d = Path(directory)
    tables = read_tables(d)
    utt2spk = tables["utt2spk"]
    utts = list(utt2spk)
    check_sorted_unique(d / "utt2spk", utts)
    bad = speaker_sort_violation(utt2spk) if spk_sort else None
    if bad is not None:
        raise DataDirError(
            f"{d / 'utt2spk'}:{utts.index(bad) + 1}: utt2spk is not in sorted order when sorted first on "
            f"speaker-id (make speaker-ids prefixes of utt-ids): {bad!r}")
    if "spk2utt" not in tables:
        raise DataDirError(f"{d / 'spk2utt'}: missing (create it with utils/utt2spk_to_spk2utt.pl)")
    spk2utt = tables["spk2utt"]
    check_sorted_unique(d / "spk2utt", list(spk2utt))
    expected = utt2spk_to_spk2utt(utt2spk)
    for lineno, (spk, value) in enumerate(spk2utt.items(), 1):
        if sorted(value.split()) != sorted(expected.get(spk, [])):
            raise DataDirError(f"{d / 'spk2utt'}:{lineno}: speaker {spk!r} does not match utt2spk")
    missing_spk = set(expected) - set(spk2utt)
    if missing_spk:
        raise DataDirError(f"{d / 'spk2utt'}: speakers in utt2spk but not here: {sorted(missing_spk)[:3]}")

    wav_scp = tables["wav.scp"]
    check_sorted_unique(d / "wav.scp", list(wav_scp))
    if "segments" in tables:
        segments = tables["segments"]
        check_sorted_unique(d / "segments", list(segments))
        _same_keys(d / "segments", list(segments), utts)
        for lineno, value in enumerate(segments.values(), 1):
            seg = parse_segment(d / "segments", lineno, value)
            if seg.reco not in wav_scp:
                raise DataDirError(f"{d / 'segments'}:{lineno}: recording {seg.reco!r} not in wav.scp")
    else:
        _same_keys(d / "wav.scp", list(wav_scp), utts)
    if "utt2dur" in tables:
        utt2dur = tables["utt2dur"]
        check_sorted_unique(d / "utt2dur", list(utt2dur))
        _same_keys(d / "utt2dur", list(utt2dur), utts)
        for lineno, value in enumerate(utt2dur.values(), 1):
            parse_positive(d / "utt2dur", lineno, value)
    if "spk2gender" in tables:
        spk2gender = tables["spk2gender"]
        check_sorted_unique(d / "spk2gender", list(spk2gender))
        _same_keys(d / "spk2gender", list(spk2gender), list(spk2utt), what="speaker", source="spk2utt")
        for lineno, value in enumerate(spk2gender.values(), 1):
            if value not in ("m", "f"):
                raise DataDirError(f"{d / 'spk2gender'}:{lineno}: gender must be m or f, got {value!r}")
    return tables


def _same_keys(path: Path, keys: List[str], utts: List[str], what: str = "utterance",
               source: str = "utt2spk") -> None:
    if keys == utts:
        return
    extra = sorted(set(keys) - set(utts), key=c_sort_key)
    missing = sorted(set(utts) - set(keys), key=c_sort_key)
    if extra:
        lineno = keys.index(extra[0]) + 1
        raise DataDirError(f"{path}:{lineno}: {what} {extra[0]!r} is not in {source}")
    raise DataDirError(f"{path}: {what} {missing[0]!r} of {source} is missing ({len(missing)} in all)")


def fix_data_dir(directory: PathLike) -> List[str]:
    """Like Kaldi's fix_data_dir.sh: sort every file and keep the utterances present
    in all of them. Returns warnings (what was dropped or re-sorted)."""
    d = Path(directory)
    warnings: List[str] = []
    wav_scp = read_table(d / "wav.scp", max_fields=None)
    utt2spk = read_table(d / "utt2spk")
    segments = read_table(d / "segments", 4, 4) if (d / "segments").is_file() else None
    utt2dur = read_table(d / "utt2dur") if (d / "utt2dur").is_file() else None
    spk2gender = read_table(d / "spk2gender") if (d / "spk2gender").is_file() else None
    keep = set(utt2spk)
    if segments is not None:
        keep &= {u for u, v in segments.items() if v.split()[0] in wav_scp}
    else:
        keep &= set(wav_scp)
    if utt2dur is not None:
        keep &= set(utt2dur)
    if spk2gender is not None:  # as Kaldi: speakers without a gender are dropped
        keep &= {u for u in keep if utt2spk[u] in spk2gender}
    if len(keep) < len(utt2spk):
        warnings.append(f"{d}: dropped {len(utt2spk) - len(keep)} utterances not present in every file")
    for name, table in (("utt2spk", utt2spk), ("wav.scp", wav_scp)):
        keys = list(table)
        if keys != sorted(keys, key=c_sort_key):
            warnings.append(f"{d / name}: was not sorted (LC_ALL=C); sorted it")
    data = DataDir(
        wav_scp={},
        utt2spk={u: s for u, s in utt2spk.items() if u in keep},
        segments=None if segments is None else {
            u: parse_segment(d / "segments", i, v)
            for i, (u, v) in enumerate(segments.items(), 1) if u in keep},
        utt2dur=None if utt2dur is None else {u: float(v) for u, v in utt2dur.items() if u in keep},
    )
    if spk2gender is not None:
        spks = set(data.utt2spk.values())
        data.spk2gender = {s: g for s, g in spk2gender.items() if s in spks}
    recos = {s.reco for s in data.segments.values()} if data.segments is not None else keep
    data.wav_scp = {k: v for k, v in wav_scp.items() if k in recos}
    data.write(d)
    return warnings


def split_data_dir(directory: PathLike, num_jobs: int, per_utt: bool = False) -> List[Path]:
    """Kaldi's split_data.sh: write directory/split{N}/{1..N} and return their paths.

    By default a speaker's utterances stay in one part (parts balanced by
    utterance count); per_utt=True splits utterances evenly regardless of speaker.
    """
    if num_jobs < 1:
        raise DataDirError(f"split_data_dir: number of jobs must be >= 1, got {num_jobs}")
    d = Path(directory)
    data = DataDir.load(d, validate=False)
    suffix = "utt" if per_utt else ""
    if per_utt:
        units = [[u] for u in data.utts]
    else:
        units = [[u for u in data.utts if data.utt2spk[u] == s] for s in data.spk2utt]
    if len(units) < num_jobs:
        raise DataDirError(f"{d}: cannot split {len(units)} {'utterances' if per_utt else 'speakers'} "
                           f"into {num_jobs} parts")
    # Contiguous chunks of near-equal utterance count (what split_scp.pl does).
    total = sum(len(u) for u in units)
    parts: List[List[str]] = [[] for _ in range(num_jobs)]
    done, j = 0, 0
    for i, unit in enumerate(units):
        remaining_units = len(units) - i
        if j < num_jobs - 1 and parts[j] and (done >= total * (j + 1) / num_jobs
                                              or remaining_units <= num_jobs - 1 - j):
            j += 1
        parts[j].extend(unit)
        done += len(unit)
    out = []
    for n, utts in enumerate(parts, 1):
        sub = d / f"split{num_jobs}{suffix}" / str(n)
        data.subset(utts).write(sub)
        out.append(sub)
    return out
