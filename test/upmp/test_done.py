"""upmp.done: a stage output is complete only while its record matches its inputs, options and outputs."""
import json
import os

import pytest

from upmp.done import done_path, is_done, snapshot, stamp, write_done


@pytest.fixture
def stage(tmp_path):
    """One input, one option, two outputs and their record, written in the stage's order."""
    src, out, extra = tmp_path / "in.txt", tmp_path / "out.txt", tmp_path / "out.json"
    src.write_text("abc\n")
    out.write_text("result\n")
    extra.write_text("{}\n")
    record = done_path(out)
    args = ([src], {"lda_dim": 200, "layers": [0, 4]}, [out, extra])
    write_done(record, *args)
    return record, src, out, extra, args


def test_complete_after_write_done(stage):
    record, src, out, extra, args = stage
    assert record.name == "out.txt.done"
    assert is_done(record, *args) == (True, "")
    body = json.loads(record.read_text())
    assert body["inputs"] == {str(src): [4, src.stat().st_mtime_ns]}
    assert body["outputs"][str(out)] == [7, out.stat().st_mtime_ns]
    assert body["options"] == {"lda_dim": 200, "layers": [0, 4]}


def test_a_changed_input_is_stale(stage):
    record, src, out, extra, args = stage
    src.write_text("abd\n")  # same size: the mtime tells
    os.utime(src, ns=(src.stat().st_mtime_ns + 10**9,) * 2)
    v = is_done(record, *args)
    assert not v and v.reason == f"{src} changed since {record}"
    os.utime(src, ns=(10**9, 10**9))  # older than before counts too (equality, not age)
    assert not is_done(record, *args)


def test_a_removed_or_new_input_is_stale(stage, tmp_path):
    record, src, out, extra, args = stage
    src.unlink()
    assert is_done(record, *args).reason == f"{src} is missing since {record}"
    src.write_text("abc\n")
    absent = tmp_path / "segments"  # an input that does not exist is recorded as such ...
    write_done(record, [src, absent], args[1], args[2])
    assert is_done(record, [src, absent], args[1], args[2])
    absent.write_text("x\n")  # ... and appearing makes the outputs stale
    assert not is_done(record, [src, absent], args[1], args[2])
    assert is_done(record, [src], args[1], args[2]).reason == f"input {absent} of {record} is no longer an input"


def test_a_changed_option_is_stale(stage):
    record, src, out, extra, args = stage
    v = is_done(record, [src], {"lda_dim": 100, "layers": [0, 4]}, [out, extra])
    assert not v and v.reason == f"option lda_dim: 200 in {record}, now 100"
    assert not is_done(record, [src], {"lda_dim": 200, "layers": [0, 4], "new": 1}, [out, extra])
    assert is_done(record, [src], {"lda_dim": 200, "layers": (0, 4)}, [out, extra])  # as JSON reads it back


def test_a_missing_or_truncated_output_is_stale(stage):
    record, src, out, extra, args = stage
    with open(out, "r+") as f:
        f.truncate(3)
    assert is_done(record, *args).reason == f"{out} changed after {record} was written"
    out.unlink()
    assert is_done(record, *args).reason == f"{out} is missing"


def test_a_record_written_before_its_outputs_never_counts(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.write_text("x\n")
    out.write_text("old\n")
    record = done_path(out)
    write_done(record, [src], {}, [out])
    out.write_text("newer\n")  # the outputs rewritten after the record: a record of the old ones
    assert not is_done(record, [src], {}, [out])
    with pytest.raises(FileNotFoundError, match="output .*never was not written"):
        write_done(record, [src], {}, [out, tmp_path / "never"])


def test_no_record_or_garbage_is_stale(stage):
    record, src, out, extra, args = stage
    record.unlink()
    assert is_done(record, *args).reason == f"no record {record}"
    record.write_text("{not json")
    assert is_done(record, *args).reason == f"{record} is unreadable"
    write_done(record, *args)
    assert not is_done(record, args[0], args[1], [out])  # other outputs named


def test_hashed_inputs_compare_by_content(stage):
    record, src, out, extra, args = stage
    write_done(record, *args, hashed=[src])
    assert json.loads(record.read_text())["inputs"][str(src)] == stamp(src, hashed=True) and len(stamp(src, True)) == 64
    os.utime(src, ns=(10**9, 10**9))  # touched, same content: still complete
    assert is_done(record, *args, hashed=[src])
    src.write_text("abd\n")
    assert not is_done(record, *args, hashed=[src])


def test_repeated_and_differently_spelled_paths_name_the_same_files(tmp_path, monkeypatch):
    # e.g. score_sets --calibration linear linear names one output twice; './i' and 'i' are one input
    monkeypatch.chdir(tmp_path)
    (tmp_path / "i").write_text("x\n")
    (tmp_path / "o").write_text("y\n")
    write_done("o.done", ["./i", "i"], {}, ["o", "./o"], hashed=["./i"])
    assert is_done("o.done", ["i"], {}, ["o"], hashed=["i"]) == (True, "")
    assert is_done("o.done", ["i", "./i"], {}, ["./o", "o", "o"], hashed=["./i"]) == (True, "")
    assert json.loads((tmp_path / "o.done").read_text())["inputs"] == {"i": stamp("i", hashed=True)}


def test_an_input_changed_while_the_stage_ran_writes_no_record(stage, caplog):
    record, src, out, extra, args = stage
    record.unlink()
    seen = snapshot(args[0])  # before the stage reads in.txt
    src.write_text("abcd\n")  # changed meanwhile: the outputs were made from the old text
    assert write_done(record, *args, seen=seen) is False and not record.exists()
    assert [r.message for r in caplog.records] == [
        f"{src} changed while the stage ran: not writing {record} (the next run redoes the stage)"]
    assert write_done(record, *args, seen=snapshot(args[0])) is True and is_done(record, *args)
