"""The LibriSpeech recipe's run.sh: its own flags reach stage 0, which writes only data/; help and
unknown options. (Stages 1-5 are the shared sv.sh, run end to end by test/recipes/test_vctk.py.)"""
import os

from helpers import ROOT, make_recipe, run
from fakes.librispeech import SPEAKERS, make_librispeech
from upmp.data.kaldi_dir import DataDir
from upmp.data.trials import read_kaldi_trials

LIBRI = ROOT / "egs" / "librispeech" / "sv1"


def test_stage0_with_root_and_protocol_dir_flags(tmp_path):
    corpus = make_librispeech(tmp_path / "LibriSpeech")
    proto = tmp_path / "proto" / "LibriSpeech" / "trials"
    proto.mkdir(parents=True)
    (proto / "trials-dev.csv").write_text("LABEL,SAMPLE1,SAMPLE2\n1,dev-clean/84/84-1004-0000.wav,"
                                          "dev-clean/84/84-1004-0001.wav\n0,dev-clean/84/84-1004-0000.wav,"
                                          "dev-other/116/116-1006-0001.wav\n")
    (proto / "trials-test.csv").write_text("LABEL,SAMPLE1,SAMPLE2\n0,test-clean/61/61-1007-0000.wav,"
                                           "test-clean/237/237-2009-0001.wav\n")
    recipe = make_recipe(tmp_path, "librispeech")
    r = run(recipe, "--stage", "0", "--stop_stage", "0", f"--librispeech_root={corpus}",
            "--protocol-dir", str(tmp_path / "proto"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"protocol source: local directory {tmp_path / 'proto'}" in r.stderr
    assert r.stdout.count("Successfully validated") == 3
    assert sorted(os.listdir(recipe)) == sorted(["cmd.sh", "conf", "data", "db.sh", "local", "path.sh", "run.sh",
                                                 "sv.sh", "utils"])   # stage 0 writes data/ only
    assert sorted(os.listdir(recipe / "data")) == ["librispeech_test", "librispeech_train", "librispeech_valid"]
    assert read_kaldi_trials(str(recipe / "data/librispeech_valid/trials")) == [
        ("84-1004-0000", "84-1004-0001", True), ("84-1004-0000", "116-1006-0001", False)]
    train = DataDir.load(recipe / "data/librispeech_train")
    assert set(train.utt2spk.values()) == {s for s, (_, sub) in SPEAKERS.items() if sub.startswith("train")}


def test_help_and_unknown_option(tmp_path):
    recipe = make_recipe(tmp_path, "librispeech")
    r = run(recipe, "--help")
    assert r.returncode == 0 and "--librispeech_root <dir>" in r.stderr and "--upstream wavlm_large" in r.stderr
    assert "Stages:" in r.stderr   # sv.sh's help follows
    r = run(recipe, "--bogus_option", "1")
    assert r.returncode == 1 and "invalid option --bogus_option" in r.stderr
    r = run(recipe, "--librispeech_root")
    assert r.returncode != 0 and "--librispeech_root needs a value" in r.stderr
