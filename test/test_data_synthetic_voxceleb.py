import hashlib
import re

import pytest
import soundfile

from upmp.data.kaldi_dir import DataDir, DataDirError, validate_data_dir
from upmp.data.synthetic import make_corpus
from upmp.data.trials import read_kaldi_trials, read_voxceleb_trials
from upmp.data.voxceleb import prepare_voxceleb1


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_layout_is_voxceleb1(small_corpus):
    wavs = sorted(small_corpus.glob("wav/*/*/*.wav"))
    assert len(wavs) == 8 * 2 * 2
    for w in wavs:
        spk, session, name = w.parts[-3:]
        assert re.fullmatch(r"id1\d{4}", spk)
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{10}", session)
        assert re.fullmatch(r"\d{5}\.wav", name)
        info = soundfile.info(str(w))
        assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
        assert 3.0 <= info.duration <= 8.0 + 1e-3
    meta = (small_corpus / "vox1_meta.csv").read_text().splitlines()
    assert meta[0] == "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"
    assert sum(line.endswith("\ttest") for line in meta) == 3
    sessions = {w.parts[-3]: set() for w in wavs}
    for w in wavs:
        sessions[w.parts[-3]].add(w.parts[-2])
    assert all(len(s) == 2 for s in sessions.values())


def test_trials_are_cross_session_and_balanced(small_corpus):
    lines = (small_corpus / "veri_test2.txt").read_text().splitlines()
    assert all(re.fullmatch(r"[01] id1\d{4}/\S+/\d{5}\.wav id1\d{4}/\S+/\d{5}\.wav", l) for l in lines)
    trials = read_voxceleb_trials(str(small_corpus / "veri_test2.txt"))
    targets = [(a, b) for a, b, t in trials if t]
    # 3 test speakers x 2 sessions x 2 utts: each speaker has 2 x 2 = 4 cross-session pairs
    assert len(targets) == 12
    assert sum(1 for *_, t in trials if not t) == 12
    for a, b in targets:
        assert a.split("-")[0] == b.split("-")[0] and a.split("-")[1] != b.split("-")[1]
    for a, b, t in trials:
        assert (a.split("-")[0] == b.split("-")[0]) == t


def test_deterministic_from_seed(tmp_path, small_corpus):
    again = tmp_path / "again"
    make_corpus(str(again), num_speakers=8, num_test_speakers=3, sessions_per_speaker=2,
                utts_per_session=2, seed=7, num_workers=1, progress=False)
    assert digest(again) == digest(small_corpus)
    other = tmp_path / "other"
    make_corpus(str(other), num_speakers=8, num_test_speakers=3, sessions_per_speaker=2,
                utts_per_session=2, seed=8, num_workers=2, progress=False)
    assert digest(other) != digest(small_corpus)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_test_speakers"):
        make_corpus(str(tmp_path / "x"), num_speakers=4, num_test_speakers=4)


def test_prepare_voxceleb1(tmp_path, small_corpus):
    out = prepare_voxceleb1(str(small_corpus), str(tmp_path / "data"))
    dev, test = out["voxceleb1_dev"], out["voxceleb1_test"]
    for d in (dev, test):
        validate_data_dir(d)
    dev_data, test_data = DataDir.load(dev), DataDir.load(test)
    assert len(dev_data.spk2utt) == 5 and len(test_data.spk2utt) == 3
    assert not set(dev_data.spk2utt) & set(test_data.spk2utt)
    utt = test_data.utts[0]
    spk, video, n = utt.split("-")
    assert test_data.wav_scp[utt] == str(small_corpus.resolve() / "wav" / spk / video / f"{n}.wav")
    assert abs(test_data.utt2dur[utt] - soundfile.info(test_data.wav_scp[utt]).duration) < 1e-3
    trials = read_kaldi_trials(str(test / "trials"))
    assert len(trials) == 24
    assert {u for a, b, _ in trials for u in (a, b)} <= set(test_data.utts)
    assert (test / "trials").read_text().split("\n")[0].split()[2] in ("target", "nontarget")


def test_prepare_voxceleb1_errors(tmp_path, small_corpus):
    import shutil
    root = tmp_path / "vox"
    shutil.copytree(small_corpus, root)
    first = (root / "veri_test2.txt").read_text().splitlines()[0].split()[1]
    (root / "wav" / first).unlink()
    with pytest.raises(DataDirError, match=r"veri_test2.txt:1: utterance .* not found"):
        prepare_voxceleb1(str(root), str(tmp_path / "data"))
    (root / "veri_test2.txt").write_text("1 a.wav\n")
    with pytest.raises(DataDirError, match=r"veri_test2.txt:1: expected '<1\|0> <enroll.wav> <test.wav>'"):
        prepare_voxceleb1(str(root), str(tmp_path / "data"))


def test_prepare_voxceleb1_validation_split(tmp_path, small_corpus):
    out = prepare_voxceleb1(str(small_corpus), str(tmp_path / "data"), valid_speakers=2, seed=3)
    valid, dev = DataDir.load(out["voxceleb1_valid"]), DataDir.load(out["voxceleb1_dev"])
    assert len(valid.spk2utt) == 2 and len(dev.spk2utt) == 3 and not set(valid.spk2utt) & set(dev.spk2utt)
    trials = read_kaldi_trials(str(out["voxceleb1_valid"] / "trials"))
    # 2 speakers x 2 sessions x 2 utts: 4 cross-session targets each, as many nontargets
    assert sum(t for *_, t in trials) == 8 and len(trials) == 16
    assert {u for a, b, _ in trials for u in (a, b)} <= set(valid.utts)
    with pytest.raises(DataDirError, match="cannot hold out 4 of 5"):
        prepare_voxceleb1(str(small_corpus), str(tmp_path / "data2"), valid_speakers=4)


def test_balanced_trials_generator():
    from upmp.data.trials import make_balanced_trials
    utt2spk = {f"{s}-{v}-{u}": s for s in "abc" for v in ("v1", "v2") for u in range(3)}
    sessions = {u: u.split("-")[1] for u in utt2spk}
    trials = make_balanced_trials(utt2spk, seed=0, utt2session=sessions)
    targets = [(a, b) for a, b, t in trials if t]
    assert len(targets) == 3 * 9 and len(trials) == 54
    assert all(sessions[a] != sessions[b] for a, b in targets)
    assert len({frozenset(p[:2]) for p in trials}) == 54  # no repeated pair
    assert make_balanced_trials(utt2spk, seed=0, utt2session=sessions) == trials
    assert make_balanced_trials(utt2spk, seed=1, utt2session=sessions) != trials
    capped = make_balanced_trials(utt2spk, seed=0, max_targets_per_speaker=2)
    assert sum(t for *_, t in capped) == 6
