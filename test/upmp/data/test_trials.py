"""Trial list readers and conversion, on the paper's real lists in ../shared/protocols."""
from pathlib import Path

import pytest

import forkserver  # test/forkserver.py

from upmp.data.kaldi_dir import DataDirError
from upmp.data.trials import path_to_utt, read_espnet_trials, read_kaldi_trials, read_paper_csv_trials

PROTOCOLS = Path(__file__).resolve().parents[4] / "shared" / "protocols" / "unipool-sv"
needs_protocols = pytest.mark.skipif(not PROTOCOLS.is_dir(), reason="shared/protocols not beside the checkout")


def test_path_to_utt():
    assert path_to_utt("vox1_test_wav/id10270/x6uYqmx31kE/00001.wav") == "id10270-x6uYqmx31kE-00001"
    assert path_to_utt("p329/p329_050.wav") == "p329_050"
    assert path_to_utt("test-clean/6829/6829-68771-0026.wav") == "6829-68771-0026"
    assert path_to_utt("a/b/00001.wav", "basename") == "00001"
    with pytest.raises(ValueError, match="unknown id scheme"):
        path_to_utt("x.wav", "other")


@needs_protocols
@pytest.mark.parametrize("rel, count, first", [
    ("VCTK-Corpus/trials/trials-test.csv", 16072, ("p329_050", "p329_382", True)),
    ("VCTK-Corpus/trials/trials-valid.csv", 16040, ("p263_383", "p263_179", True)),
    ("LibriSpeech/trials/trials-test.csv", 36427, ("6829-68771-0026", "6829-68769-0043", True)),
    ("VoxCeleb/trials/trials-vox1.csv", 37720, ("id10270-x6uYqmx31kE-00001", "id10270-8jEAjG6SegY-00008", True)),
])
def test_paper_lists(rel, count, first):
    trials = read_paper_csv_trials(str(PROTOCOLS / rel))
    assert len(trials) == count and trials[0] == first
    # the label agrees with the speaker prefix of the ids
    def spk(u):
        return u.split("-")[0] if "-" in u else u.split("_")[0]
    for a, b, t in trials[:2000]:
        assert (spk(a) == spk(b)) == t


@needs_protocols
def test_convert_cli_paper_csv(tmp_path):
    out = tmp_path / "trials"
    r = forkserver.run("upmp.bin.convert_trials", "--format", "paper_csv", "--input",
                        str(PROTOCOLS / "VoxCeleb/trials/trials-vox1.csv"), "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert "37720 trials (18860 target, 18860 nontarget)" in r.stdout
    assert out.read_text().splitlines()[0] == "id10270-x6uYqmx31kE-00001 id10270-8jEAjG6SegY-00008 target"
    assert len(read_kaldi_trials(str(out))) == 37720


def test_convert_cli_espnet_and_missing_utterance(tmp_path):
    (tmp_path / "trial_label").write_text("a-1*b-1 0\na-1*a-2 1\n")
    assert read_espnet_trials(str(tmp_path / "trial_label")) == [("a-1", "b-1", False), ("a-1", "a-2", True)]
    d = tmp_path / "data"
    d.mkdir()
    (d / "utt2spk").write_text("a-1 a\na-2 a\n")
    r = forkserver.run("upmp.bin.convert_trials", "--format", "espnet", "--input",
                        str(tmp_path / "trial_label"), "--output", str(tmp_path / "t"), "--data_dir", str(d))
    assert r.returncode == 1 and "trial_label:1: utterance 'b-1' is not in the data dir" in r.stderr
    assert not (tmp_path / "t").exists()


def test_reader_errors(tmp_path):
    (tmp_path / "x.csv").write_text("LABEL,SAMPLE1,SAMPLE2\n1,a.wav,b.wav\n2,a.wav,b.wav\n")
    with pytest.raises(DataDirError, match=r"x.csv:3: expected '<0\|1>,<sample1>,<sample2>"):
        read_paper_csv_trials(str(tmp_path / "x.csv"))
    (tmp_path / "y.csv").write_text("A,B\n")
    with pytest.raises(DataDirError, match=r"y.csv:1: expected a header"):
        read_paper_csv_trials(str(tmp_path / "y.csv"))
    (tmp_path / "e").write_text("a*b*c 1\n")
    with pytest.raises(DataDirError, match=r"e:1: expected '<utt1>\*<utt2> <0\|1>'"):
        read_espnet_trials(str(tmp_path / "e"))


def test_sniff_and_match_trial_names_to_ids(tmp_path):
    from upmp.data.trials import match_trial_utts, read_trials, sniff_trials_format
    lists = {"k": "a-1 b-1 nontarget\n", "v": "0 a/x/1.wav b/x/1.wav\n", "e": "a-1*b-1 0\n",
             "c": "LABEL,SAMPLE1,SAMPLE2\n0,a.wav,b.wav\n"}
    for name, text in lists.items():
        (tmp_path / name).write_text(text)
    assert [sniff_trials_format(str(tmp_path / n)) for n in lists] == ["kaldi", "voxceleb", "espnet", "paper_csv"]
    assert read_trials(str(tmp_path / "v"), "auto") == [("a-x-1", "b-x-1", False)]
    (tmp_path / "bad").write_text("a b c d\n")
    with pytest.raises(DataDirError, match=r"bad:1: not a trial list in a known form"):
        sniff_trials_format(str(tmp_path / "bad"))
    trials = [("a/x/00001.wav", "p1_002.wav", True)]
    assert match_trial_utts(trials, {"a/x/00001.wav", "p1_002"}, "t") == [("a/x/00001.wav", "p1_002", True)]
    assert match_trial_utts(trials, {"a/x/00001", "p1_002"}, "t") == [("a/x/00001", "p1_002", True)]
    assert match_trial_utts(trials, {"a-x-00001", "p1_002"}, "t") == [("a-x-00001", "p1_002", True)]
    with pytest.raises(DataDirError, match=r"t:3: 'a/x/00001.wav' matches several utterances: \['a-x-00001', 'a/x/00001'\]"):
        match_trial_utts(trials, {"a/x/00001", "a-x-00001", "p1_002"}, "t", first_line=3)


def test_espnet_trial_scp_reads_the_labels_beside_it(tmp_path):
    (tmp_path / "trial.scp").write_text("a/x/1*b/x/1 dump/raw/org/a.ark:12\n")
    with pytest.raises(DataDirError, match=r"trial.scp:1: this looks like ESPnet's trial.scp"):
        read_espnet_trials(str(tmp_path / "trial.scp"))
    (tmp_path / "trial_label").write_text("a/x/1*b/x/1 0\n")
    assert read_espnet_trials(str(tmp_path / "trial.scp")) == [("a/x/1", "b/x/1", False)]


def test_a_trial_is_a_named_tuple_and_writes_as_read(tmp_path):
    from upmp.data.trials import Trial, write_kaldi_trials
    text = "a-1 b-1 nontarget\na-1 a-2 target\n"
    (tmp_path / "trials").write_text(text)
    trials = read_kaldi_trials(str(tmp_path / "trials"))
    assert trials == [Trial("a-1", "b-1", False), Trial("a-1", "a-2", True)]
    assert (trials[1].enrol, trials[1].test, trials[1].target) == ("a-1", "a-2", True)
    enrol, test, target = trials[0]
    assert (enrol, test, target) == ("a-1", "b-1", False)
    write_kaldi_trials(str(tmp_path / "again"), trials)
    assert (tmp_path / "again").read_text() == text
