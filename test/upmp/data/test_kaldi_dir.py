from pathlib import Path

import pytest

from upmp.data.kaldi_dir import (DataDir, DataDirError, Segment, fix_data_dir, read_table,
                                 split_data_dir, utt2spk_to_spk2utt, validate_data_dir, write_table)


def write(path: Path, text: str) -> None:
    path.write_text(text)


def make_dir(tmp_path, wav="a-1 /x/a1.wav\na-2 sox /x/a2.flac -t wav - |\nb-1 /x/b1.wav\n",
             utt2spk="a-1 a\na-2 a\nb-1 b\n", spk2utt="a a-1 a-2\nb b-1\n") -> Path:
    d = tmp_path / "d"
    d.mkdir(exist_ok=True)
    write(d / "wav.scp", wav)
    write(d / "utt2spk", utt2spk)
    if spk2utt is not None:
        write(d / "spk2utt", spk2utt)
    return d


def test_round_trip_keeps_pipes_and_sorts(tmp_path):
    data = DataDir(wav_scp={"b-1": "/x/b1.wav", "a-1": "sox /x/a.flac -t wav -r 16000 - |"},
                   utt2spk={"b-1": "b", "a-1": "a"}, utt2dur={"a-1": 1.5, "b-1": 2.25})
    data.write(tmp_path / "d")
    assert (tmp_path / "d" / "wav.scp").read_text() == \
        "a-1 sox /x/a.flac -t wav -r 16000 - |\nb-1 /x/b1.wav\n"
    assert (tmp_path / "d" / "spk2utt").read_text() == "a a-1\nb b-1\n"
    back = DataDir.load(tmp_path / "d")
    assert back.wav_scp == {"a-1": "sox /x/a.flac -t wav -r 16000 - |", "b-1": "/x/b1.wav"}
    assert back.utt2spk == {"a-1": "a", "b-1": "b"}
    assert back.utt2dur == {"a-1": 1.5, "b-1": 2.25}


def test_round_trip_with_segments(tmp_path):
    data = DataDir(wav_scp={"rec1": "/x/rec1.wav"}, utt2spk={"s-1": "s", "s-2": "s"},
                   segments={"s-1": Segment("rec1", 0.0, 1.5), "s-2": Segment("rec1", 1.5, 3.0)})
    data.write(tmp_path / "d")
    back = DataDir.load(tmp_path / "d")
    assert back.wav_entry("s-2") == ("/x/rec1.wav", Segment("rec1", 1.5, 3.0))


def test_c_locale_order(tmp_path):
    # LC_ALL=C puts upper case before lower case and '-' before digits
    write_table(tmp_path / "t", {"b": "1", "B": "2", "a-1": "3", "a1": "4"})
    assert [l.split()[0] for l in (tmp_path / "t").read_text().splitlines()] == ["B", "a-1", "a1", "b"]


def test_valid_dir_passes(tmp_path):
    validate_data_dir(make_dir(tmp_path))


@pytest.mark.parametrize("kwargs, message", [
    (dict(utt2spk="a-2 a\na-1 a\nb-1 b\n", spk2utt="a a-1 a-2\nb b-1\n"), r"utt2spk:2: not sorted"),
    (dict(utt2spk="a-1 a\na-1 a\nb-1 b\n"), r"utt2spk:2: duplicate key 'a-1'"),
    (dict(utt2spk="a-1 a\na-2 a\nb-1\n"), r"utt2spk:3: expected at least 2 fields"),
    (dict(spk2utt="a a-1\nb b-1\n"), r"spk2utt:1: speaker 'a' does not match utt2spk"),
    (dict(spk2utt=None), r"spk2utt: missing"),
    (dict(wav="a-1 /x/a1.wav\nb-1 /x/b1.wav\n"), r"wav.scp: utterance 'a-2' of utt2spk is missing"),
    (dict(wav="a-1 /x/a1.wav\na-2 /x\na-3 /x\nb-1 /x/b1.wav\n"), r"wav.scp:3: utterance 'a-3' is not in utt2spk"),
    (dict(utt2spk="a-1 z\na-2 a\nb-1 b\n", spk2utt="a a-2\nb b-1\nz a-1\n"),
     r"utt2spk:1: utt2spk is not in sorted order when sorted first on speaker-id"),
])
def test_validation_errors_name_file_and_line(tmp_path, kwargs, message):
    d = make_dir(tmp_path, **kwargs)
    with pytest.raises(DataDirError, match=message):
        validate_data_dir(d)


def test_segments_validation(tmp_path):
    d = make_dir(tmp_path, wav="rec /x/rec.wav\n")
    write(d / "segments", "a-1 rec 0.0 1.0\na-2 rec 1.0 2.0\nb-1 rec 2.0 1.5\n")
    with pytest.raises(DataDirError, match=r"segments:3: bad segment times"):
        validate_data_dir(d)
    write(d / "segments", "a-1 rec 0.0 1.0\na-2 rec 1.0 2.0\nb-1 other 2.0 3.0\n")
    with pytest.raises(DataDirError, match=r"segments:3: recording 'other' not in wav.scp"):
        validate_data_dir(d)


def test_utt2dur_validation(tmp_path):
    d = make_dir(tmp_path)
    write(d / "utt2dur", "a-1 1.0\na-2 x\nb-1 2\n")
    with pytest.raises(DataDirError, match=r"utt2dur:2: not a number"):
        validate_data_dir(d)


def test_spk2gender_round_trip_validation_and_fix(tmp_path):
    d = make_dir(tmp_path)
    write(d / "spk2gender", "a f\nb m\n")
    validate_data_dir(d)
    assert DataDir.load(d).spk2gender == {"a": "f", "b": "m"}
    assert DataDir.load(d).subset(["b-1"]).spk2gender == {"b": "m"}
    write(d / "spk2gender", "a f\nb male\n")
    with pytest.raises(DataDirError, match=r"spk2gender:2: gender must be m or f, got 'male'"):
        validate_data_dir(d)
    write(d / "spk2gender", "a f\n")
    with pytest.raises(DataDirError, match=r"spk2gender: speaker 'b' of spk2utt is missing"):
        validate_data_dir(d)
    # Kaldi's fix_data_dir.sh keeps only speakers with a gender
    fix_data_dir(d)
    validate_data_dir(d)
    assert read_table(d / "utt2spk") == {"a-1": "a", "a-2": "a"} and read_table(d / "spk2gender") == {"a": "f"}


def test_spk2utt_from_utt2spk():
    assert utt2spk_to_spk2utt({"b-1": "b", "a-1": "a", "a-2": "a"}) == {"a": ["a-1", "a-2"], "b": ["b-1"]}


def test_read_table_errors(tmp_path):
    write(tmp_path / "t", "a 1\n\nb 2\n")
    with pytest.raises(DataDirError, match=r"t:2: empty line"):
        read_table(tmp_path / "t")


def make_speakers_dir(tmp_path, counts):
    utts = {f"s{s}-{u:02d}": f"s{s}" for s, n in enumerate(counts) for u in range(n)}
    data = DataDir({u: f"/x/{u}.wav" for u in utts}, utts)
    data.write(tmp_path / "d")
    return tmp_path / "d", utts


def test_split_keeps_speakers_together(tmp_path):
    d, utts = make_speakers_dir(tmp_path, [5, 1, 3, 4, 2])
    parts = split_data_dir(d, 3)
    assert [p.name for p in parts] == ["1", "2", "3"]
    seen = []
    for p in parts:
        validate_data_dir(p)
        part = DataDir.load(p)
        seen += part.utts
        for spk in part.spk2utt:  # a speaker's utterances all land in one part
            assert set(part.spk2utt[spk]) == {u for u, s in utts.items() if s == spk}
    assert sorted(seen) == sorted(utts)


def test_split_per_utt_even(tmp_path):
    d, utts = make_speakers_dir(tmp_path, [7, 3])
    parts = split_data_dir(d, 4, per_utt=True)
    sizes = [len(DataDir.load(p).utts) for p in parts]
    assert sum(sizes) == 10 and max(sizes) - min(sizes) <= 1
    assert parts[0].parent.name == "split4utt"


def test_split_more_jobs_than_speakers_fails(tmp_path):
    d, _ = make_speakers_dir(tmp_path, [2, 2])
    with pytest.raises(DataDirError, match="cannot split 2 speakers into 3 parts"):
        split_data_dir(d, 3)


def test_fix_data_dir_sorts_and_intersects(tmp_path):
    d = make_dir(tmp_path, wav="b-1 /x/b1.wav\na-1 /x/a1.wav\n", utt2spk="a-2 a\na-1 a\nb-1 b\n", spk2utt=None)
    warnings = fix_data_dir(d)
    assert any("dropped 1 utterances" in w for w in warnings)
    assert any("was not sorted" in w for w in warnings)
    validate_data_dir(d)
    assert DataDir.load(d).utts == ["a-1", "b-1"]
