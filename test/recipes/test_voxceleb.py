"""The VoxCeleb recipes' real run.sh, stage 0, on tiny trees in the official layouts; their configs."""
from dataclasses import fields

import numpy as np
import pytest
import soundfile

from helpers import ROOT, dev_speakers, make_recipe, one_line_error, vox1_extended_lists, vox1_split_layout
from helpers import run
from upmp.data.augment import Augmenter
from upmp.data.kaldi_dir import DataDir
from upmp.data.trials import read_kaldi_trials, read_voxceleb_trials
from upmp.train.schema import AugmentConf, resolve_train_config

KEYS = [f.name for f in fields(AugmentConf)]


def load_config(path, overrides=()):
    """The resolved config's plain form (config.yaml's): every key."""
    return resolve_train_config(path, overrides).to_dict()

BACKENDS = ("upmp", "ltdnn_d3net", "ltdnn_ecapa", "lap", "mhfa", "superb_ecapa", "xvector")


def keys(node, prefix=""):
    if not isinstance(node, dict):
        return set()
    return {prefix + k for k in node} | {x for k, v in node.items() for x in keys(v, f"{prefix}{k}.")}


@pytest.mark.parametrize("corpus", ["voxceleb1", "voxceleb2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_configs_have_the_mini_key_set(corpus, backend):
    cfg = load_config(str(ROOT / "egs" / corpus / "sv1" / "conf" / f"train_{backend}.yaml"))
    assert keys(cfg) == keys(load_config(str(ROOT / "egs" / "mini" / "sv1" / "conf" / f"train_{backend}.yaml")))
    assert (cfg["train_conf"]["steps"], cfg["train_conf"]["batch_size"], cfg["train_conf"]["crop_seconds"],
            cfg["optim_conf"]["lr"], cfg["loss_conf"]["margin"], cfg["loss_conf"]["scale"]) == (10000, 128, 3.0, 3e-3, 0.2, 30)


def test_online_augmentation_config(tmp_path):
    path = ROOT / "egs" / "voxceleb2" / "sv1" / "conf" / "train_upmp_online_aug.yaml"
    cfg = load_config(str(path))
    base = load_config(str(ROOT / "egs" / "voxceleb2" / "sv1" / "conf" / "train_upmp.yaml"))
    assert keys(base) <= keys(cfg) and base["train_conf"]["augment"] is None
    assert keys(cfg) - keys(base) == {f"train_conf.augment.{k}" for k in KEYS} | {
        f"train_conf.augment.{s}.{k}" for s, ks in (("kinds", ("noise", "music", "babble", "reverb")),
                                                    ("snr", ("noise", "music", "babble"))) for k in ks}
    assert Augmenter(AugmentConf(**cfg["train_conf"]["augment"])).kinds == []  # roots empty by default: nothing applied
    (tmp_path / "rirs" / "simulated_rirs" / "smallroom" / "Room001").mkdir(parents=True)
    soundfile.write(tmp_path / "rirs" / "simulated_rirs" / "smallroom" / "Room001" / "Room001-00001.wav",
                    np.eye(1, 100, 3)[0].astype(np.float32), 16000)
    cfg = resolve_train_config(str(path), ["--train_conf.augment.rirs_root", str(tmp_path / "rirs")])
    assert Augmenter(cfg.train_conf.augment).kinds == ["reverb"]


def test_voxceleb1_stage0(tmp_path, small_corpus):
    root = vox1_split_layout(small_corpus, tmp_path / "VoxCeleb1")
    recipe = make_recipe(tmp_path, "voxceleb1")
    r = run(recipe, "--stage", "0", "--stop_stage", "0", "--voxceleb1_root", str(root), "--speed_perturb", "true",
            "--local_data_opts", "--valid_speakers 2")
    assert r.returncode == 0, r.stderr[-3000:]
    data = recipe / "data"
    assert sorted(p.name for p in data.iterdir()) == ["voxceleb1_dev", "voxceleb1_dev_sp", "voxceleb1_test",
                                                      "voxceleb1_valid"]
    dev, sp = DataDir.load(data / "voxceleb1_dev"), DataDir.load(data / "voxceleb1_dev_sp")
    assert len(dev.spk2utt) == 3 and len(sp.spk2utt) == 9 and len(sp.utts) == 3 * len(dev.utts)
    assert len(read_kaldi_trials(str(data / "voxceleb1_test" / "trials"))) == 24
    assert len(read_kaldi_trials(str(data / "voxceleb1_valid" / "trials"))) == 16
    bad = run(recipe, "--stage", "0", "--stop_stage", "0", "--speed_perturb", "yes")
    assert bad.returncode != 0 and "--speed_perturb must be true or false" in bad.stderr
    bad = run(recipe, "--stage", "0", "--stop_stage", "0", "--voxceleb3_root", "/x")
    assert bad.returncode != 0 and "invalid option --voxceleb3_root" in bad.stderr


def test_voxceleb2_stage0_and_augmentation_roots(tmp_path, small_corpus, small_vox2):
    vox1 = vox1_split_layout(small_corpus, tmp_path / "VoxCeleb1")
    vox1_extended_lists(small_corpus, vox1)
    vox2, _ = small_vox2
    recipe = make_recipe(tmp_path, "voxceleb2")
    r = run(recipe, "--stage", "0", "--stop_stage", "0", "--voxceleb1_root", str(vox1), "--voxceleb2_root", str(vox2),
            "--local_data_opts", "--valid_speakers 2 --audio m4a")
    assert r.returncode == 0, r.stderr[-3000:]
    data = recipe / "data"
    assert sorted(p.name for p in data.iterdir()) == ["voxceleb1_e", "voxceleb1_h", "voxceleb1_test",
                                                      "voxceleb2_dev", "voxceleb2_valid"]
    dev = DataDir.load(data / "voxceleb2_dev")
    assert len(dev.spk2utt) == 3 and all(v.startswith("ffmpeg ") for v in dev.wav_scp.values())
    for name in ("voxceleb1_test", "voxceleb1_e", "voxceleb1_h", "voxceleb2_valid"):
        assert read_kaldi_trials(str(data / name / "trials"))
    # the MUSAN / RIR roots select online training with the augmenting config and reach the
    # trainer as overrides; a root without audio is refused before any upstream is loaded
    r = run(recipe, "--stage", "2", "--stop_stage", "2", "--voxceleb2_root", str(vox2), "--musan_root", "/m/musan",
            "--train_args", "--train_conf.steps 3 --train_conf.device cpu")
    assert r.returncode != 0
    log = next((recipe / "exp").glob("upmp_online_aug_*_online/train.stdout.log")).read_text()
    assert "--train_data_dir data/voxceleb2_dev" in log and "--train_conf.augment.musan_root /m/musan" in log
    assert "/m/musan" in next(line for line in log.splitlines() if line.startswith("train.py: error:"))
    r = run(recipe, "--stage", "2", "--stop_stage", "2", "--musan_root", "/m/musan", "--backend", "upmp lap")
    assert r.returncode == 1 and "--backend picks conf/train_<backend>.yaml, which does not augment" in r.stderr


def original_vox1o(root):
    """veri_test.txt beside the fake's cleaned veri_test2.txt: the same trials and one more (the cleaned
    list drops trials of the original), here a same-video target pair of the first test speaker."""
    cleaned = (root / "veri_test2.txt").read_text()
    spk = cleaned.split()[1].split("/")[0]
    video = sorted((root / "vox1_test_wav" / "wav" / spk).iterdir())[0]
    a, b = sorted(video.iterdir())[:2]
    (root / "veri_test.txt").write_text(cleaned + f"1 {spk}/{video.name}/{a.name} {spk}/{video.name}/{b.name}\n")
    return read_voxceleb_trials(str(root / "veri_test.txt"))


def test_voxceleb1_stage0_authors_protocol(tmp_path, small_corpus, small_vox2):
    """--protocol authors: all dev speakers train, the original Vox1-O list tests, the authors' balanced
    trials over the Vox2 test speakers validate; names beside the default protocol's."""
    from fakes.voxceleb import check_authors_trials, vox2_test_tree
    from upmp.recipes.voxceleb import prepare_voxceleb2_test_valid
    root = vox1_split_layout(small_corpus, tmp_path / "VoxCeleb1")
    original = original_vox1o(root)
    vox2 = vox2_test_tree(small_vox2, tmp_path / "VoxCeleb2")
    recipe = make_recipe(tmp_path, "voxceleb1")
    args = ("--stage", "0", "--stop_stage", "0", "--voxceleb1_root", str(root), "--protocol", "authors")
    bad = run(recipe, *args, "--voxceleb2_root", str(small_vox2[0]))  # dev audio only, no test/
    one_line_error(bad, "prepare_voxceleb2.py: error: ", "no VoxCeleb2 test audio", "give --voxceleb2_root")
    assert not (recipe / "data").exists()
    r = run(recipe, *args, "--voxceleb2_root", str(vox2), "--local_data_opts", "--valid_trials 12 --seed 3 --protocol_url none")
    assert r.returncode == 0, r.stderr[-3000:]
    data = recipe / "data"
    assert sorted(p.name for p in data.iterdir()) == ["voxceleb1_dev_all", "voxceleb1_test_orig", "voxceleb2_test_valid"]
    meta = [line.split("\t") for line in (root / "vox1_meta.csv").read_text().splitlines()[1:]]
    train = DataDir.load(data / "voxceleb1_dev_all")
    assert set(train.spk2utt) == {row[0] for row in meta if row[-1] == "dev"} and len(train.spk2utt) == 5
    test = DataDir.load(data / "voxceleb1_test_orig")
    assert read_kaldi_trials(str(data / "voxceleb1_test_orig" / "trials")) == original and len(original) == 25
    assert set(test.spk2utt) == {row[0] for row in meta if row[-1] == "test"}
    valid = DataDir.load(data / "voxceleb2_test_valid")
    trials = read_kaldi_trials(str(data / "voxceleb2_test_valid" / "trials"))
    assert set(valid.spk2utt) == set(dev_speakers(3)) and not set(valid.spk2utt) & set(train.spk2utt)
    check_authors_trials(trials, valid.utts, 12)
    assert (len(trials), sum(t for *_, t in trials)) == (12, 6)
    assert trials == read_kaldi_trials(str(prepare_voxceleb2_test_valid(str(vox2), str(tmp_path / "again"), seed=3,
                                                                        total_trials=12)["voxceleb2_test_valid"] / "trials"))
    r = run(recipe, "--stage", "2", "--stop_stage", "2", "--protocol", "authors", "--exp_tag", "x",
            "--train_args", "--train_conf.device cpu")
    assert r.returncode != 0  # no layer stacks: stopped at training, in the protocol's experiment dir
    log = next((recipe / "exp").glob("upmp_*_authors_x/train.stdout.log")).read_text()
    assert "--train_scp dump/" in log and "/voxceleb1_dev_all/layers.scp" in log
    assert "/voxceleb2_test_valid/layers.scp --valid_trials data/voxceleb2_test_valid/trials" in log
    bad = run(recipe, "--stage", "0", "--stop_stage", "0", "--protocol", "paper")
    assert bad.returncode == 1 and "--protocol must be upmp or authors" in bad.stderr


def test_voxceleb2_stage0_authors_protocol(tmp_path, small_corpus, small_vox2):
    """--protocol authors: all Vox2 dev speakers train, the original Vox1-O list validates, the cleaned
    Vox1-O / E / H lists test as with the default protocol."""
    vox1 = vox1_split_layout(small_corpus, tmp_path / "VoxCeleb1")
    vox1_extended_lists(small_corpus, vox1)
    original = original_vox1o(vox1)
    vox2, _ = small_vox2
    recipe = make_recipe(tmp_path, "voxceleb2")
    r = run(recipe, "--stage", "0", "--stop_stage", "0", "--voxceleb1_root", str(vox1), "--voxceleb2_root", str(vox2),
            "--protocol", "authors", "--local_data_opts", "--audio wav")
    assert r.returncode == 0, r.stderr[-3000:]
    data = recipe / "data"
    assert sorted(p.name for p in data.iterdir()) == ["voxceleb1_e", "voxceleb1_h", "voxceleb1_test", "voxceleb1_test_orig",
                                                      "voxceleb2_dev_all"]
    assert list(DataDir.load(data / "voxceleb2_dev_all").spk2utt) == dev_speakers(5)  # none held out
    assert read_kaldi_trials(str(data / "voxceleb1_test_orig" / "trials")) == original
    assert read_kaldi_trials(str(data / "voxceleb1_test" / "trials")) == \
        read_voxceleb_trials(str(vox1 / "veri_test2.txt"))
    assert read_kaldi_trials(str(data / "voxceleb1_e" / "trials"))
