"""upmp.fileio's Kaldi vector writer and directory builder: what they leave behind when they finish and
when they fail half way."""
import errno

import kaldiio
import numpy as np
import pytest

from helpers import snapshot
from upmp import fileio


def test_write_vectors_sorted_float32_and_named_by_the_final_ark(tmp_path):
    vectors = {"b-2": np.arange(3, dtype=np.float64), "B-1": np.ones(3, np.float32), "a-1": -np.ones(3, np.float32)}
    fileio.write_vectors(tmp_path, "xvector", vectors)
    lines = (tmp_path / "xvector.scp").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["B-1", "a-1", "b-2"]          # C order: upper case first
    assert all(line.split()[1].startswith(f"{tmp_path}/xvector.ark:") for line in lines)
    read = dict(kaldiio.load_scp_sequential(str(tmp_path / "xvector.scp")))
    assert read.keys() == vectors.keys()
    for key, v in vectors.items():
        assert read[key].dtype == np.float32 and np.array_equal(read[key], v.astype(np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xvector.ark", "xvector.scp"]   # no temporary left


def test_write_vectors_failing_half_way_keeps_the_earlier_files(tmp_path, monkeypatch):
    """A full disk in the middle of the ark: the complete earlier pair stays as it was, no temporary file
    stays taking space, and the error names the ark being written."""
    fileio.write_vectors(tmp_path, "xvector", {"a": np.zeros(2, np.float32)})
    before = snapshot(tmp_path)
    calls = []

    def full_disk(self, key, value):
        calls.append(key)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_call(self, key, value)

    real_call = kaldiio.WriteHelper.__call__
    monkeypatch.setattr(kaldiio.WriteHelper, "__call__", full_disk)
    with pytest.raises(OSError) as e:
        fileio.write_vectors(tmp_path, "xvector", {"a": np.ones(2), "b": np.ones(2), "c": np.ones(2)})
    assert e.value.filename == str(tmp_path / "xvector.ark")
    assert snapshot(tmp_path) == before


def test_building_dir_swaps_in_a_complete_dir_or_leaves_the_old_one(tmp_path):
    dest = tmp_path / "sub" / "set"
    with fileio.building_dir(dest, "import") as tmp:
        assert tmp.parent == dest.parent and tmp.name.startswith(".set.import.")
        (tmp / "f").write_text("first")
    assert snapshot(tmp_path / "sub", dirs=True) == {"set": None, "set/f": b"first"}
    with pytest.raises(RuntimeError, match="half way"):
        with fileio.building_dir(dest) as tmp:
            (tmp / "f").write_text("second")
            raise RuntimeError("half way")
    assert snapshot(tmp_path / "sub", dirs=True) == {"set": None, "set/f": b"first"}   # the old one, and no temporary dir
    with fileio.building_dir(dest) as tmp:
        (tmp / "g").write_text("third")
    assert snapshot(tmp_path / "sub", dirs=True) == {"set": None, "set/g": b"third"}
