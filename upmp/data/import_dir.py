"""Import a data dir prepared elsewhere (Kaldi, ESPnet, WeSpeaker) into our data/<name>.

Read from the source (never written): wav.scp (paths, `cmd |` pipes, `file.ark:offset`),
utt2spk and/or spk2utt, segments, utt2dur, utt2num_samples, and a trial list (Kaldi
`trials`, WeSpeaker `*.kaldi`, VoxCeleb `1 a.wav b.wav`, ESPnet `trial_label` / `trial.scp`).
Ignored: reco2file_and_channel, text, feats.scp and the rest (we extract from audio).
Written to data/<name>: wav.scp, utt2spk, spk2utt, [segments], [utt2dur], [trials]
(Kaldi form), [utt_map] and import.json (source, file stamps, sample rate).

Rules:
- Relative audio paths (in wav.scp, ark entries and the audio files named in pipe
  commands) are resolved against the source's recipe dir: --src_root, or else the
  nearest of the source dir and its ancestors under which the first relative path
  exists (an ESPnet dump/raw/<set> names dump/raw/org/... from its recipe dir; a Kaldi
  data/<set> often names files from its recipe dir too). Every path must exist. In a
  command, the words ending in an audio extension (.wav, .flac, .m4a, .sph, ...) are
  those files; the rest of the command is kept as it is.
- Files not C-sorted are sorted in our copy with a warning. Utterance ids that do not
  sort by speaker (Kaldi's rule: speaker ids prefix utterance ids) become
  `<spk>-<utt>` in our copy with a warning; utt_map keeps `<our id> <source id>`.
- Inconsistencies (an utterance without audio or speaker, utt2spk and spk2utt
  disagreeing, duplicate keys, a trial naming an unknown utterance) are errors naming
  file and line, not filtered as fix_data_dir.sh would: dropping utterances silently
  changes a training set or a trial list, so the source should be fixed instead.
- The sample rate of the first recording is probed (an error if unreadable); other
  than 16 kHz is logged once (upmp.data.audio resamples every utterance at extraction).
  ESPnet's utt2num_samples becomes utt2dur at that rate.
- The copy is built in a temporary dir and renamed into place; a second import of an
  unchanged source is skipped; a set name already used by another source or by a set
  we prepared gets a suffix (_2, _3, ...), so two imports never clobber each other.
- A data dir of ours (data_root/<name>) is used as it is; a trial list given for it is
  converted into its trials, rewritten only when they change.
- Sets as recipes name them (use_sets: sv.sh's --train_set / --valid_set / --test_sets): a set
  of ours is a name (no '/') or a path to data_root/<its name>; anything else with a '/' is a
  path to import. The trial lists given for our sets are converted once stage 0 has written the
  sets (convert_listed_trials).
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from tqdm import tqdm

from upmp.data.audio import AUDIO_EXTENSIONS, SAMPLE_RATE
from upmp.data.kaldi_dir import (DataDirError, PathLike, c_sort_key, parse_positive, parse_segment, read_table,
                                 speaker_sort_violation, utt2spk_to_spk2utt, validate_data_dir, write_table)
from upmp.data.trials import convert_trial_list, update_kaldi_trials, write_kaldi_trials
from upmp.done import stamp
from upmp.errors import AudioError
from upmp.fileio import building_dir

logger = logging.getLogger(__name__)

RECORD = "import.json"
SOURCE_FILES = ("wav.scp", "utt2spk", "spk2utt", "segments", "utt2dur", "utt2num_samples")
OWN_TRIALS = ("trials", "trial_label")  # a source dir's own list: Kaldi, ESPnet


@dataclass
class ImportResult:
    name: str
    dst: Path
    num_utts: int = 0
    num_speakers: int = 0
    sample_rate: Optional[int] = None
    num_trials: int = 0
    skipped: bool = False
    warnings: List[str] = field(default_factory=list)


def import_data_dir(src: PathLike, data_root: PathLike = "data", trials: Optional[PathLike] = None,
                    require_trials: bool = False, src_root: Optional[PathLike] = None) -> ImportResult:
    """Import the data dir `src` into data_root/<name> (see the module docstring)."""
    src = Path(os.path.abspath(src))
    data_root = Path(data_root)
    if not src.is_dir():
        raise DataDirError(f"{src}: not a directory")
    if not (src / "wav.scp").is_file():
        raise DataDirError(f"{src / 'wav.scp'}: missing (a data dir needs wav.scp and utt2spk or spk2utt)")
    if data_root.is_dir() and src.parent.resolve() == data_root.resolve():
        # already one of ours (data/<name> given as a path): use it as it is
        validate_data_dir(src)
        return _use_ours(src, trials, require_trials)
    trials_path = _find_trials(src, trials, require_trials)
    record = {"source": str(src), "src_root": str(Path(os.path.abspath(src_root))) if src_root else None,
              "stamp": _stamp([src / n for n in SOURCE_FILES]),
              "trials": str(trials_path) if trials_path else None,
              "trials_stamp": _stamp([trials_path] if trials_path else [])}
    name = _choose_name(src, data_root)
    dst = data_root / name
    old = _read_record(dst)
    # up to date: same source files and the same trial list (any, when none is asked for)
    compared = [k for k in record if trials_path or not k.startswith("trials")]
    if old and all(old.get(k) == record[k] for k in compared):
        logger.info("%s is up to date with %s, skipping", dst, src)
        return ImportResult(name, dst, old.get("num_utts", 0), old.get("num_speakers", 0),
                            old.get("sample_rate"), old.get("num_trials", 0), skipped=True)

    result = ImportResult(name, dst)
    tables = _our_tables(src, src_root, result)
    utt_map = tables.pop("utt_map", {})
    if trials_path:
        tables["trials"] = convert_trial_list(str(trials_path), tables["utt2spk"], utt_map)
        result.num_trials = len(tables["trials"])
    if utt_map:
        tables["utt_map"] = utt_map
    result.num_utts, result.num_speakers = len(tables["utt2spk"]), len(set(tables["utt2spk"].values()))
    record.update(num_utts=result.num_utts, num_speakers=result.num_speakers, sample_rate=result.sample_rate,
                  num_trials=result.num_trials)
    _write_dir(dst, tables, record)
    if result.sample_rate != SAMPLE_RATE:
        logger.info("%s: audio is %d Hz; it is resampled to %d Hz at extraction", src, result.sample_rate,
                    SAMPLE_RATE)
    logger.info("imported %s -> %s: %d utterances, %d speakers%s", src, dst, result.num_utts,
                result.num_speakers, f", {result.num_trials} trials" if trials_path else "")
    return result


def is_ours(spec: PathLike, data_root: PathLike = "data") -> bool:
    """A set of ours, used as it is: a name (no '/'), or a path to data_root/<its name>."""
    spec = str(spec)
    return "/" not in spec or os.path.realpath(spec) == os.path.realpath(Path(data_root) / Path(spec).name)


def _lists_per_set(specs: List[str], trials: Optional[List[str]]) -> List[Optional[str]]:
    trials = list(trials or [])
    if trials and len(trials) != len(specs):
        raise DataDirError(f"--trials has {len(trials)} lists for {len(specs)} test sets "
                           f"(give one per test set, in order)")
    return trials or [None] * len(specs)


def use_sets(specs: List[str], data_root: PathLike = "data", trials: Optional[List[str]] = None,
             require_trials: bool = False, src_root: Optional[PathLike] = None) -> List[str]:
    """The names under data_root of sets given by name or path, in order, in one step: a set of ours
    (is_ours) is its name (stage 0 may not have written it yet: nothing of it is read), any other dir
    is imported (import_data_dir) with its trial list. trials: one list per set, or none; those given
    for our sets are converted by convert_listed_trials once the sets exist (after stage 0)."""
    return [Path(spec).name if is_ours(spec, data_root)
            else import_data_dir(spec, data_root, listed, require_trials, src_root).name
            for spec, listed in zip(specs, _lists_per_set(specs, trials))]


def convert_listed_trials(specs: List[str], trials: Optional[List[str]], data_root: PathLike = "data") -> None:
    """The trial lists given for sets of ours (use_sets leaves them), each converted into
    data_root/<name>/trials (convert_ours_trials); the other sets' lists were converted when
    use_sets imported them."""
    for spec, listed in zip(specs, _lists_per_set(specs, trials)):
        if listed and is_ours(spec, data_root):
            convert_ours_trials(Path(data_root) / Path(spec).name, listed)


def convert_ours_trials(dst: Path, trials: PathLike) -> int:
    """A trial list (any form upmp.data.trials reads) converted into dst/trials, our ids (through
    dst/utt_map when the import renamed them); rewritten only when they change, so stage 4 does not
    rescore an unchanged list. Returns the number of trials."""
    path = _find_trials(dst, trials, True)
    if not (dst / "utt2spk").is_file():
        raise DataDirError(f"{dst / 'utt2spk'}: no such file (the data dir the trial list {path} is for)")
    utt_map = read_table(dst / "utt_map") if (dst / "utt_map").is_file() else {}
    converted = convert_trial_list(str(path), read_table(dst / "utt2spk"), utt_map)
    written = update_kaldi_trials(str(dst / "trials"), converted)
    n_tar = sum(t for *_, t in converted)
    logger.info("%s: %d trials (%d target, %d nontarget)%s, from %s", dst / "trials", len(converted), n_tar,
                len(converted) - n_tar, "" if written else ", unchanged", path)
    return len(converted)


def _use_ours(src: Path, trials: Optional[PathLike], require_trials: bool) -> ImportResult:
    """One of our data dirs as it is; a given trial list is converted into its trials (written
    only when they change, so stage 4 does not rescore an unchanged list)."""
    result = ImportResult(src.name, src, skipped=True)
    if trials:
        result.num_trials = convert_ours_trials(src, trials)
    elif require_trials and not (src / "trials").is_file():
        raise DataDirError(f"{src}: no trials file (Kaldi trials of this data dir); give a trial list with --trials")
    return result


def _our_tables(src: Path, src_root: Optional[PathLike], result: ImportResult) -> Dict[str, Dict[str, str]]:
    """The source's tables as our copy holds them: our ids, absolute audio paths, utt2dur
    (from utt2num_samples when needed) and utt_map ({our id: source id}) when ids changed."""
    tables, segments = _read_tables(src, result.warnings)
    utt2spk, utt_map = _speaker_sorted_ids(src, tables["utt2spk"], result.warnings)
    # every table holds exactly the utterances (_read_tables checked): rename by the map
    ours = (lambda table: {o: table[u] for o, u in utt_map.items()}) if utt_map else (lambda table: table)
    wav_scp = _resolve_audio(src, tables["wav.scp"], src_root)
    result.sample_rate = _probe_rate(src, wav_scp)
    out = {"utt2spk": utt2spk}
    if segments is not None:
        used = {v.split()[0] for v in segments.values()}
        if len(used) < len(wav_scp):
            logger.info("%s: %d recordings have no segment, left out", src / "wav.scp", len(wav_scp) - len(used))
        out["wav.scp"] = {r: v for r, v in wav_scp.items() if r in used}
        out["segments"] = ours(segments)
    else:
        out["wav.scp"] = ours(wav_scp)
    if "utt2dur" in tables:
        out["utt2dur"] = ours(tables["utt2dur"])
    elif "utt2num_samples" in tables:
        out["utt2dur"] = {u: f"{int(n) / result.sample_rate:.4f}" for u, n in ours(tables["utt2num_samples"]).items()}
    if utt_map:
        out["utt_map"] = utt_map
    return out


def _write_dir(dst: Path, tables: Dict[str, object], record: dict) -> None:
    """Write the copy into a temporary dir beside dst, check it with validate_data_dir, swap it in
    (upmp.fileio.building_dir): an older import at dst stays whole until the new one is complete."""
    with building_dir(dst, "import") as tmp:
        for name, table in tables.items():
            if name == "trials":
                write_kaldi_trials(str(tmp / name), table)
            else:
                write_table(tmp / name, table)
        utt2spk = tables["utt2spk"]
        write_table(tmp / "spk2utt", {s: " ".join(sorted(us, key=c_sort_key))
                                      for s, us in utt2spk_to_spk2utt(utt2spk).items()})
        validate_data_dir(tmp)
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")


def _find_trials(src: Path, trials: Optional[PathLike], required: bool) -> Optional[Path]:
    if trials:
        path = Path(os.path.abspath(trials))
        if not path.is_file():
            raise DataDirError(f"{path}: trial list not found")
        return path
    for name in OWN_TRIALS:
        if (src / name).is_file():
            return src / name
    if required:
        hint = (f"{src / 'trials'} is a directory of lists: pick one with --trials"
                if (src / "trials").is_dir() else "give one with --trials")
        raise DataDirError(f"{src}: no trial list (trials or trial_label); {hint}")
    return None


def _stamp(paths: List[Path]) -> Dict[str, List[int]]:
    """{path: [size, mtime_ns]} of the files that exist: upmp.done's stamp (import.json is the done-record
    of an import, kept inside the directory it describes, which is swapped in whole)."""
    return {str(p): stamp(p) for p in paths if p.is_file()}


def _read_record(dst: Path) -> Optional[dict]:
    try:
        return json.loads((dst / RECORD).read_text())
    except (OSError, ValueError):
        return None


def _choose_name(src: Path, data_root: Path) -> str:
    """The source dir's name, made safe; suffixed while data/<name> belongs to something else."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", src.name) or "set"
    for n in range(1, 1000):
        name = base if n == 1 else f"{base}_{n}"
        dst = data_root / name
        if not dst.exists() or (_read_record(dst) or {}).get("source") == str(src):
            return name
    raise DataDirError(f"{data_root}: no free name for {src}")


def _read_tables(src: Path, warnings: List[str]) -> Tuple[Dict[str, Dict[str, str]], Optional[Dict[str, str]]]:
    """Source tables keyed as in the source, checked against each other."""
    tables: Dict[str, Dict[str, str]] = {}
    spk2utt: Dict[str, str] = {}
    tables["wav.scp"] = read_table(src / "wav.scp", max_fields=None)
    if (src / "utt2spk").is_file():
        tables["utt2spk"] = read_table(src / "utt2spk")
    if (src / "spk2utt").is_file():
        spk2utt = read_table(src / "spk2utt", max_fields=None)
        derived: Dict[str, str] = {}
        for lineno, (spk, utts) in enumerate(spk2utt.items(), 1):
            for u in utts.split():
                if u in derived:
                    raise DataDirError(f"{src / 'spk2utt'}:{lineno}: utterance {u!r} listed under two speakers "
                                       f"({derived[u]!r} and {spk!r})")
                derived[u] = spk
        if "utt2spk" not in tables:
            tables["utt2spk"] = derived
        else:
            _check_agree(src, tables["utt2spk"], derived, spk2utt)
    if "utt2spk" not in tables:
        raise DataDirError(f"{src / 'utt2spk'}: missing (and no spk2utt to derive it from)")
    utts = tables["utt2spk"]
    segments = None
    if (src / "segments").is_file():
        raw = read_table(src / "segments", 4, 4)
        for lineno, value in enumerate(raw.values(), 1):
            seg = parse_segment(src / "segments", lineno, value)
            if seg.reco not in tables["wav.scp"]:
                raise DataDirError(f"{src / 'segments'}:{lineno}: recording {seg.reco!r} is not in wav.scp")
        _same_utts(src / "segments", raw, utts)
        segments = raw
    else:
        _same_utts(src / "wav.scp", tables["wav.scp"], utts)
    for name in ("utt2dur", "utt2num_samples"):
        if (src / name).is_file():
            tables[name] = read_table(src / name)
            _same_utts(src / name, tables[name], utts)
            for lineno, value in enumerate(tables[name].values(), 1):
                parse_positive(src / name, lineno, value)
    for name, table in [*tables.items(), ("spk2utt", spk2utt), ("segments", segments or {})]:
        keys = list(table)
        if (src / name).is_file() and keys != sorted(keys, key=c_sort_key):
            warnings.append(f"{src / name}: not sorted (LC_ALL=C); sorted in our copy")
            logger.warning(warnings[-1])
    ignored = sorted(p.name for p in src.iterdir() if p.is_file() and p.name not in SOURCE_FILES + OWN_TRIALS)
    if ignored:
        logger.info("%s: ignoring %s", src, " ".join(ignored))
    return tables, segments


def _check_agree(src: Path, utt2spk: Dict[str, str], derived: Dict[str, str], spk2utt: Dict[str, str]) -> None:
    for lineno, (u, spk) in enumerate(utt2spk.items(), 1):
        if derived.get(u) != spk:
            where = "is missing from spk2utt" if u not in derived else f"is under {derived[u]!r} in spk2utt"
            raise DataDirError(f"{src / 'utt2spk'}:{lineno}: utterance {u!r} of speaker {spk!r} {where}")
    for lineno, utts in enumerate(spk2utt.values(), 1):
        extra = [u for u in utts.split() if u not in utt2spk]
        if extra:
            raise DataDirError(f"{src / 'spk2utt'}:{lineno}: utterance {extra[0]!r} is not in utt2spk")


def _same_utts(path: Path, table: Dict[str, str], utt2spk: Dict[str, str]) -> None:
    for lineno, key in enumerate(table, 1):
        if key not in utt2spk:
            raise DataDirError(f"{path}:{lineno}: utterance {key!r} has no speaker in utt2spk")
    missing = [u for u in utt2spk if u not in table]
    if missing:
        lineno = list(utt2spk).index(missing[0]) + 1
        raise DataDirError(f"{path.parent / 'utt2spk'}:{lineno}: utterance {missing[0]!r} is not in {path.name} "
                           f"({len(missing)} utterance(s) missing)")


def _speaker_sorted_ids(src: Path, utt2spk: Dict[str, str], warnings: List[str]
                        ) -> Tuple[Dict[str, str], Dict[str, str]]:
    """utt2spk with ids that sort by speaker, and utt_map {our id: source id} when ids had to change."""
    if speaker_sort_violation(utt2spk) is None:
        return utt2spk, {}
    utt_map = {f"{s}-{u}": u for u, s in utt2spk.items()}
    renamed = {o: utt2spk[u] for o, u in utt_map.items()}
    if speaker_sort_violation(renamed) is not None:
        raise DataDirError(f"{src / 'utt2spk'}: utterance ids do not sort by speaker even as <spk>-<utt> "
                           f"(a speaker id is a prefix of another?)")
    warnings.append(f"{src / 'utt2spk'}: utterance ids do not sort by speaker (Kaldi's rule); our copy uses "
                    f"<spk>-<utt> ids, utt_map maps them back")
    logger.warning(warnings[-1])
    return renamed, utt_map


def _resolve_audio(src: Path, wav_scp: Dict[str, str], src_root: Optional[PathLike]) -> Dict[str, str]:
    """wav.scp values with every relative audio path made absolute; all must exist."""
    root = [Path(os.path.abspath(src_root))] if src_root else []
    first_rel: List[str] = []

    def resolve(path: str, lineno: int) -> str:
        if os.path.isabs(path):
            if not os.path.exists(path):
                raise DataDirError(f"{src / 'wav.scp'}:{lineno}: audio file {path!r} not found")
            return path
        if not root:
            base = next((b for b in [src, *src.parents] if (b / path).exists()), None)
            if base is None:
                raise DataDirError(f"{src / 'wav.scp'}:{lineno}: audio file {path!r} not found under {src} or any "
                                   f"of its parent dirs (relative paths name files from the recipe dir; "
                                   f"give it with --src_root)")
            root.append(base)
            first_rel.append(f"wav.scp:{lineno}")
            logger.info("%s: relative audio paths resolve against %s", src, base)
        full = root[0] / path
        if not full.exists():
            how = f"--src_root {root[0]}" if src_root else f"the dir where {first_rel[0]}'s path exists"
            raise DataDirError(f"{src / 'wav.scp'}:{lineno}: audio file {path!r} not found under {root[0]} "
                               f"(relative paths resolve against {how}; set --src_root)")
        return str(full)

    out = {}
    for lineno, (key, value) in enumerate(tqdm(wav_scp.items(), desc=f"checking {src.name}/wav.scp",
                                               mininterval=5, disable=len(wav_scp) < 10000), 1):
        if value.endswith("|"):
            # a command: each word naming an audio file (by its extension) is checked, and made absolute
            words = re.split(r"(\s+)", value)
            out[key] = "".join(resolve(w, lineno) if not w.isspace() and not w.startswith("-")
                               and w.lower().endswith(AUDIO_EXTENSIONS) else w for w in words)
        elif re.search(r"\.ark:\d+(\[[^\]]*\])?$", value):
            ark, offset = value.rsplit(".ark:", 1)
            out[key] = resolve(ark + ".ark", lineno) + ":" + offset
        else:
            out[key] = resolve(value, lineno)
    return out


def _probe_rate(src: Path, wav_scp: Dict[str, str]) -> int:
    """Sample rate of the first recording in file order."""
    if not wav_scp:
        raise DataDirError(f"{src / 'wav.scp'}: empty")
    from upmp.data.audio import sample_rate_of
    lineno = 1
    try:
        rate = sample_rate_of(next(iter(wav_scp.values())))
    except AudioError as e:
        raise DataDirError(f"{src / 'wav.scp'}:{lineno}: cannot read the sample rate: {e}") from None
    if rate <= 0:
        raise DataDirError(f"{src / 'wav.scp'}:{lineno}: bad sample rate {rate}")
    return rate
