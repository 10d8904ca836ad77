"""Sets as recipes name them (upmp.data.import_dir.use_sets, upmp.bin.import_data_dir with several --src):
the one "is this set ours" rule, imports of the rest in one step, and the trial lists of ours converted
after stage 0 (convert_listed_trials, --convert_ours)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import soundfile

from upmp.data.import_dir import is_ours
from upmp.data.kaldi_dir import DataDir

ROOT = Path(__file__).resolve().parents[3]


def their_dir(d: Path, utts) -> Path:
    """A data dir prepared elsewhere, with real (silent) audio: imports probe the sample rate."""
    (d / "wav").mkdir(parents=True)
    for u in utts:
        soundfile.write(d / "wav" / f"{u}.wav", [0.0] * 1600, 16000)
    DataDir({u: str(d / "wav" / f"{u}.wav") for u in utts}, {u: u.split("-")[0] for u in utts}).write(d)
    return d


def use(cwd: Path, *args):
    return subprocess.run([sys.executable, "-m", "upmp.bin.import_data_dir", "--data_root", "data", *args],
                          cwd=cwd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_is_ours(tmp_path):
    (tmp_path / "data" / "test").mkdir(parents=True)
    (tmp_path / "elsewhere" / "test").mkdir(parents=True)
    (tmp_path / "data" / "linked").symlink_to(tmp_path / "elsewhere" / "test")
    data = tmp_path / "data"
    assert is_ours("test", data) and is_ours("not_there_yet", data)   # a name: stage 0 writes it
    assert is_ours(data / "test", data) and is_ours(f"{data}/test/", data)
    assert not is_ours(tmp_path / "elsewhere" / "test", data)           # same name, another dir: imported
    assert is_ours(data / "linked", data) and is_ours(tmp_path / "elsewhere" / "test", tmp_path / "elsewhere")


def test_names_imports_and_deferred_trials(tmp_path):
    utts = ["a-1", "a-2", "b-1", "b-2"]
    theirs = their_dir(tmp_path / "theirs" / "vox1", utts)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "mine").write_text("a-1 b-1 nontarget\na-1 a-2 target\n")
    (lists / "theirs").write_text("a-2 b-2 nontarget\n")
    # before stage 0: our set "test" does not exist yet, its list is left for later; theirs is imported
    r = use(tmp_path, "--src", "test", str(theirs), "--trials", str(lists / "mine"), str(lists / "theirs"),
            "--require_trials")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "test vox1\n" and not (tmp_path / "data" / "test").exists()
    assert f"{lists / 'mine'}, the list of test (a set of ours), is converted by --convert_ours once data/test exists" \
        in r.stderr  # said, not dropped silently
    assert (tmp_path / "data" / "vox1" / "trials").read_text() == "a-2 b-2 nontarget\n"
    DataDir({u: f"/x/{u}.wav" for u in utts}, {u: u[0] for u in utts}).write(tmp_path / "data" / "test")  # stage 0
    (tmp_path / "data" / "test" / "trials").write_text("a-1 b-2 nontarget\n")                              # its own
    # after stage 0: only our sets' lists are converted (the import is not repeated)
    r = use(tmp_path, "--src", "data/test", str(theirs), "--trials", str(lists / "mine"), str(lists / "theirs"),
            "--convert_ours")
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert (tmp_path / "data" / "test" / "trials").read_text() == "a-1 b-1 nontarget\na-1 a-2 target\n"
    assert "is up to date with" not in r.stderr and "imported" not in r.stderr
    mtime = (tmp_path / "data" / "test" / "trials").stat().st_mtime_ns
    r = use(tmp_path, "--src", "test", str(theirs), "--trials", str(lists / "mine"), str(lists / "theirs"),
            "--convert_ours")
    assert "2 trials (1 target, 1 nontarget), unchanged" in r.stderr
    assert (tmp_path / "data" / "test" / "trials").stat().st_mtime_ns == mtime   # stage 4 does not rescore
    # a path to our data dir is ours, not imported as a copy of itself
    r = use(tmp_path, "--src", str(tmp_path / "data" / "test"), "--require_trials")
    assert r.returncode == 0 and r.stdout == "test\n"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["test", "vox1"]


def test_bad_sets_are_one_line_and_import_nothing(tmp_path):
    theirs = their_dir(tmp_path / "theirs" / "vox1", ["a-1", "b-1"])
    r = use(tmp_path, "--src", "test", str(theirs), "--trials", str(tmp_path / "one_list"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().endswith("--trials has 1 lists for 2 test sets (give one per test set, in order)")
    assert not (tmp_path / "data").exists()
    r = use(tmp_path, "--src", "test", "--trials", str(tmp_path / "missing"), "--convert_ours")
    assert r.returncode == 1 and r.stderr.strip().endswith(f"{tmp_path}/missing: trial list not found")
    r = use(tmp_path, "--src", str(theirs), "--require_trials")
    assert r.returncode == 1 and "no trial list (trials or trial_label); give one with --trials" in r.stderr
    assert not (tmp_path / "data" / "vox1").exists()
