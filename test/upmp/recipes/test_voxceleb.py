import hashlib
import os
import re
import shutil

import pytest
import soundfile

from helpers import ROOT, tone, vox1_extended_lists, vox1_split_layout

from upmp.data.kaldi_dir import DataDir, DataDirError, validate_data_dir
from upmp.recipes.mini_corpus import make_corpus
from upmp.data.trials import read_kaldi_trials, read_paper_csv_trials, read_voxceleb_trials
from upmp.recipes.voxceleb import prepare_voxceleb1


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
    root = tmp_path / "vox"
    shutil.copytree(small_corpus, root)
    first = (root / "veri_test2.txt").read_text().splitlines()[0].split()[1]
    (root / "wav" / first).unlink()
    with pytest.raises(DataDirError, match=r"veri_test2.txt:1: utterance .* not found"):
        prepare_voxceleb1(str(root), str(tmp_path / "data"))
    (root / "veri_test2.txt").write_text("1 a.wav\n")
    with pytest.raises(DataDirError, match=r"veri_test2.txt:1: expected '<1\|0> <enroll.wav> <test.wav>'"):
        prepare_voxceleb1(str(root), str(tmp_path / "data"))


def test_csv_list_errors_name_the_file_line(tmp_path):
    """A CSV list has a header: its second trial is on line 3."""
    for f in ("id10001/vid/00001.wav", "id10002/vid/00001.wav", "id10003/vid/00001.wav"):
        (tmp_path / "wav" / f).parent.mkdir(parents=True)
        soundfile.write(tmp_path / "wav" / f, tone(0.05, 300), 16000, subtype="PCM_16")
    (tmp_path / "trials.csv").write_text("LABEL,SAMPLE1,SAMPLE2\n0,id10001/vid/00001.wav,id10002/vid/00001.wav\n"
                                         "1,id10002/vid/00001.wav,id10002/vid/00002.wav\n")
    with pytest.raises(DataDirError, match=r"trials.csv:3: utterance 'id10002-vid-00002' not found under the audio"):
        prepare_voxceleb1(str(tmp_path), str(tmp_path / "data"), trials_file="trials.csv")


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


PROTOCOLS = ROOT / ".." / "shared" / "protocols" / "unipool-sv" / "VoxCeleb"
UTT_ID = re.compile(r"id\d{5}-[A-Za-z0-9_-]{11}-\d{5}")


def test_prepare_voxceleb1_split_trees(tmp_path, small_corpus):
    merged = prepare_voxceleb1(str(small_corpus), str(tmp_path / "merged"), valid_speakers=2)
    root = vox1_split_layout(small_corpus, tmp_path / "vox1")
    split = prepare_voxceleb1(str(root), str(tmp_path / "split"), valid_speakers=2)
    for name in ("voxceleb1_dev", "voxceleb1_valid", "voxceleb1_test"):
        validate_data_dir(split[name])
        a, b = DataDir.load(merged[name]), DataDir.load(split[name])
        assert a.utt2spk == b.utt2spk and a.utt2dur == b.utt2dur
        for utt, path in b.wav_scp.items():
            spk, rest = utt.split("-", 1)
            video, n = rest.rsplit("-", 1)
            part = "vox1_test_wav" if name == "voxceleb1_test" else "vox1_dev_wav"
            assert path == str(root.resolve() / part / "wav" / spk / video / f"{n}.wav")
        assert (merged[name] / "spk2utt").read_text() == (split[name] / "spk2utt").read_text()
    assert (merged["voxceleb1_test"] / "trials").read_text() == (split["voxceleb1_test"] / "trials").read_text()
    dup = next(root.glob("vox1_test_wav/wav/*"))
    shutil.copytree(dup, root / "vox1_dev_wav" / "wav" / dup.name)
    with pytest.raises(DataDirError, match=r"vox1_test_wav/wav/id\d+/.*\.wav: utterance id\d+-.* is also in .*vox1_dev_wav"):
        prepare_voxceleb1(str(root), str(tmp_path / "dup"))
    shutil.copy(root / "veri_test2.txt", tmp_path / "veri_test2.txt")
    with pytest.raises(DataDirError, match="no VoxCeleb1 wav tree found"):
        prepare_voxceleb1(str(tmp_path), str(tmp_path / "none"))


def test_prepare_voxceleb1_extended_lists_test_only(tmp_path, small_corpus):
    root = vox1_split_layout(small_corpus, tmp_path / "vox1")
    all_lines, hard_lines = vox1_extended_lists(small_corpus, root)
    out = prepare_voxceleb1(str(root), str(tmp_path / "data"), test_only=True, extended=True)
    assert sorted(out) == ["voxceleb1_e", "voxceleb1_h", "voxceleb1_test"]
    assert not (tmp_path / "data" / "voxceleb1_dev").exists()
    for name, lines in (("voxceleb1_e", all_lines), ("voxceleb1_h", hard_lines)):
        validate_data_dir(out[name])
        data = DataDir.load(out[name])
        trials = read_kaldi_trials(str(out[name] / "trials"))
        assert len(trials) == len(lines)
        assert sum(t for *_, t in trials) == sum(l.startswith("1 ") for l in lines)
        used = {p.rsplit(".", 1)[0].replace("/", "-") for l in lines for p in l.split()[1:]}
        assert set(data.utts) == used
        assert len(data.spk2utt) > 3  # dev speakers too: the reason they are test-only
    assert len(DataDir.load(out["voxceleb1_test"]).spk2utt) == 3
    # Vox1-E/H share speakers with voxceleb1_dev: refused for a Vox1-dev-trained recipe
    with pytest.raises(DataDirError, match="cannot test a model trained on voxceleb1_dev"):
        prepare_voxceleb1(str(root), str(tmp_path / "refused"), extended=True)
    assert not (tmp_path / "refused").exists()
    with pytest.raises(DataDirError, match="validation split .* needs the development set"):
        prepare_voxceleb1(str(root), str(tmp_path / "refused"), test_only=True, valid_speakers=2)
    (root / "list_test_hard2.txt").unlink()
    out = prepare_voxceleb1(str(root), str(tmp_path / "no_hard"), test_only=True, extended=True)
    assert sorted(out) == ["voxceleb1_e", "voxceleb1_test"]


def test_prepare_voxceleb1_cli_errors(tmp_path, small_corpus, capsys):
    from upmp.bin.common import run_main
    from upmp.bin.prepare_voxceleb1 import main
    root = vox1_split_layout(small_corpus, tmp_path / "vox1")
    vox1_extended_lists(small_corpus, root)
    with pytest.raises(SystemExit) as e:
        run_main(main, ["--root", str(root), "--out", str(tmp_path / "data"), "--extended"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "error: " in err and "Vox1-E/H" in err
    main(["--root", str(root), "--out", str(tmp_path / "data"), "--test_only", "--extended"])
    assert (tmp_path / "data" / "voxceleb1_h" / "trials").is_file()


@pytest.mark.skipif(not PROTOCOLS.is_dir(), reason="shared/protocols not beside the checkout")
def test_paper_vox1_list_maps_to_prepared_ids(tmp_path):
    """The paper's uncleaned Vox1-O (trials-vox1.csv): 37,720 trials whose utterances are ids
    of a data dir prepared from a tree holding exactly those files."""
    csv_path = PROTOCOLS / "trials" / "trials-vox1.csv"
    rows = csv_path.read_text().splitlines()[1:]
    trials = read_paper_csv_trials(str(csv_path), scheme="voxceleb")
    assert len(trials) == len(rows) == 37720
    assert sum(t for *_, t in trials) == sum(r.startswith("1,") for r in rows) == 18860
    test_spk = set(PROTOCOLS.joinpath("speakers", "speaker-vox1-test.csv").read_text().split()[1:])
    dev_spk = set(PROTOCOLS.joinpath("speakers", "speaker-vox1-dev.csv").read_text().split()[1:])
    assert len(test_spk) == 40 and len(dev_spk) == 1211 and not test_spk & dev_spk
    for (a, b, t), row in zip(trials, rows):
        assert UTT_ID.fullmatch(a) and UTT_ID.fullmatch(b)
        assert (a.split("-")[0] == b.split("-")[0]) == t
        assert {a.split("-")[0], b.split("-")[0]} <= test_spk
        spk_session, number = a.rsplit("-", 1)
        assert row.split(",")[1] == "vox1_test_wav/" + "/".join(spk_session.split("-", 1)) + "/" + number + ".wav"
    # the tree: every trial file (hard links to one short wav) plus one utterance per dev speaker
    root = tmp_path / "vox1"
    one = tmp_path / "one.wav"
    soundfile.write(one, tone(0.05, 300), 16000, subtype="PCM_16")
    files = {p for r in rows for p in r.split(",")[1:3]}
    files |= {f"vox1_dev_wav/{s}/aaaaaaaaaaa/00001.wav" for s in dev_spk}
    for f in files:
        part, rest = f.split("/", 1)
        dest = root / part / "wav" / rest
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(one, dest)
    meta = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    meta += [f"{s}\tName_{s}\tm\tUSA\t{'test' if s in test_spk else 'dev'}" for s in sorted(test_spk | dev_spk)]
    (root / "vox1_meta.csv").write_text("\n".join(meta) + "\n")
    out = prepare_voxceleb1(str(root), str(tmp_path / "data"), trials_file=str(csv_path))
    for name in ("voxceleb1_dev", "voxceleb1_test"):
        validate_data_dir(out[name])
    test = DataDir.load(out["voxceleb1_test"])
    assert len(test.utts) == 4715 and set(test.spk2utt) == test_spk
    assert len(DataDir.load(out["voxceleb1_dev"]).spk2utt) == 1211
    assert read_kaldi_trials(str(out["voxceleb1_test"] / "trials")) == trials
    assert {u for a, b, _ in trials for u in (a, b)} == set(test.utts)
