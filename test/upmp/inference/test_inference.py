"""Packaged models and the Python API (upmp/inference/package.py, upmp/inference/__init__.py)."""
import json
import subprocess
import sys

import kaldiio
import numpy as np
import pytest
import soundfile
import torch

from helpers import bash_env, snapshot
from upmp.inference.package import eer_threshold


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True,
                          env=bash_env(), cwd=cwd)


@pytest.fixture(scope="module")
def package(tiny_experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "model"
    elsewhere = tmp_path_factory.mktemp("cwd")  # recorded paths are absolute here; any cwd works
    r = run("upmp.bin.package_model", "--exp_dir", tiny_experiment / "exp" / "upmp", "--out", out, cwd=elsewhere)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def model(package):
    import upmp
    return upmp.load_model(str(package))


def stage3(tiny_experiment):
    return {k: np.asarray(v) for k, v in
            kaldiio.load_scp(str(tiny_experiment / "exp/upmp/embeddings/data/xvector.scp")).items()}


def test_eer_threshold_hand_computed():
    # targets .9 .8 .3, nontargets .5 .2: the operating points at t = .5 (P_miss 1/3, P_fa 1/2) and
    # t = .8 (1/3, 0) bracket the EER 1/3; interpolation 1/3 of the way from .5 to .8 gives .6
    scores, labels = np.array([.9, .8, .3, .5, .2]), np.array([1, 1, 1, 0, 0], bool)
    assert eer_threshold(scores, labels) == pytest.approx(0.6)
    # targets .9 .8 .4, nontargets .5 .3 .1: P_miss = P_fa = 1/3 exactly at t = .5
    assert eer_threshold(np.array([.9, .8, .4, .5, .3, .1]), np.array([1, 1, 1, 0, 0, 0], bool)) == pytest.approx(0.5)


def test_package_embed_equals_stage3(tiny_experiment, model):
    want = stage3(tiny_experiment)
    wav = tiny_experiment / "data/wav"
    utts = ["spk0-utt0", "spk2-utt1", "spk3-utt2"]
    got = model.embed_raw([wav / f"{u}.wav" for u in utts])
    for u, g in zip(utts, got):
        np.testing.assert_allclose(g, want[u], atol=1e-5)
    one = model.embed(str(wav / "spk0-utt0.wav"))
    assert one.shape == (model.embed_dim,) and np.linalg.norm(one) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(one, want["spk0-utt0"] / np.linalg.norm(want["spk0-utt0"]), atol=1e-5)
    batch = model.embed([str(wav / f"{u}.wav") for u in utts])
    assert batch.shape == (3, model.embed_dim)
    np.testing.assert_allclose(batch[0], one, atol=1e-6)
    samples, rate = soundfile.read(wav / "spk0-utt0.wav", dtype="float32")
    assert rate == 16000
    np.testing.assert_allclose(model.embed(samples), one, atol=1e-6)               # arrays: 16 kHz float
    np.testing.assert_allclose(model.embed(torch.from_numpy(samples)), one, atol=1e-6)


def test_audio_is_converted_as_the_recipes_do(tiny_experiment, model, tmp_path):
    from upmp.data.audio import load_audio
    samples, _ = soundfile.read(tiny_experiment / "data/wav/spk1-utt1.wav", dtype="float32")
    stereo = tmp_path / "stereo.wav"
    soundfile.write(stereo, np.stack([samples, samples], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(model.embed(str(stereo)), model.embed(samples), atol=1e-6)  # channels averaged
    from scipy.signal import resample_poly
    hi = tmp_path / "48k.flac"
    soundfile.write(hi, resample_poly(samples, 3, 1).astype(np.float32), 48000, subtype="PCM_24")
    recipe = load_audio(str(hi))  # the recipes' loader: polyphase resampling to 16 kHz
    np.testing.assert_allclose(model.embed(str(hi)), model.embed(recipe), atol=1e-6)
    assert float(model.embed(str(hi)) @ model.embed(samples)) > 0.99
    with pytest.raises(Exception, match="nope.wav") as e:
        model.embed(str(tmp_path / "nope.wav"))
    assert "\n" not in str(e.value)


def test_package_contents_are_plain_data(tiny_experiment, package):
    from upmp.scoring.calibration import LinearCalibration
    from upmp.data.trials import read_kaldi_trials
    for pt in package.rglob("*.pt"):
        torch.load(pt, weights_only=True)
    info = json.loads((package / "package.json").read_text())
    emb = stage3(tiny_experiment)
    X = np.stack(list(emb.values())).astype(np.float64)
    np.testing.assert_allclose(info["mean"], X.mean(axis=0), atol=1e-9)
    # calibration and threshold belong to the package's score: cosine after mean subtraction
    trials = read_kaldi_trials(str(tiny_experiment / "data/trials"))
    unit = {k: (v - X.mean(axis=0)) / np.linalg.norm(v - X.mean(axis=0)) for k, v in emb.items()}
    scores = np.array([unit[a] @ unit[b] for a, b, _ in trials])
    labels = np.array([t for _, _, t in trials])
    cal = LinearCalibration.fit(scores, labels)
    assert info["calibration"]["scale"] == pytest.approx(cal.scale, rel=1e-6)
    assert info["calibration"]["offset"] == pytest.approx(cal.offset, rel=1e-6, abs=1e-9)
    t = info["threshold"]["score"]
    p_miss, p_fa = np.mean(scores[labels] < t), np.mean(scores[~labels] >= t)
    assert abs(p_miss - p_fa) <= 1 / labels.sum() + 1e-9  # t sits at the crossing
    assert info["threshold"]["eer"] == pytest.approx(json.loads(
        (tiny_experiment / "exp/upmp/train_summary.json").read_text())["valid_eer"], abs=1e-6)
    card = (package / "README.md").read_text()
    assert "ge2e" in card and f"EER {info['threshold']['eer']:.2f} %" in card


def test_verify_same_speaker_scores_above_different(tiny_experiment, model, tmp_path):
    wav = tiny_experiment / "data/wav"
    same = model.verify(wav / "spk0-utt0.wav", wav / "spk0-utt2.wav")
    diff = model.verify(wav / "spk0-utt0.wav", wav / "spk2-utt0.wav")
    assert same["score"] > diff["score"]
    assert same["decision"] is True and diff["decision"] is False
    for r in (same, diff):
        cal = model.calibration
        assert r["llr"] == pytest.approx(cal["scale"] * r["score"] + cal["offset"])
        assert r["decision"] == (r["score"] >= r["threshold"])
    # the score is upmp.bin.score's cosine with --subtract_mean on stage 3's embeddings
    xv = tiny_experiment / "exp/upmp/embeddings/data/xvector.scp"
    (tmp_path / "trials").write_text("spk0-utt0 spk0-utt2 target\nspk0-utt0 spk2-utt0 nontarget\n")
    r = run("upmp.bin.score", "--method", "cosine", "--subtract_mean", "--embeddings", xv, "--trials",
            tmp_path / "trials", "--train_embeddings", xv, "--utt2spk", tiny_experiment / "data/utt2spk",
            "--out", tmp_path / "scores")
    assert r.returncode == 0, r.stderr[-2000:]
    want = [float(line.split()[2]) for line in (tmp_path / "scores").read_text().splitlines()]
    assert [same["score"], diff["score"]] == pytest.approx(want, abs=1e-5)


def test_exp_dir_loads_like_its_package(tiny_experiment, model):
    import upmp
    direct = upmp.load_model(str(tiny_experiment / "exp/upmp"))
    x = tiny_experiment / "data/wav/spk1-utt0.wav"
    np.testing.assert_allclose(direct.embed(x), model.embed(x), atol=1e-6)
    assert direct.threshold == pytest.approx(model.threshold)


def test_import_upmp_stays_light():
    r = subprocess.run([sys.executable, "-c", "import sys, upmp; print('torch' in sys.modules); upmp.load_model"],
                       capture_output=True, text=True, env=bash_env())
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


@pytest.mark.parametrize("fault, message", [
    ("version", "package format version 99"),
    ("weights", "backend.pt: corrupted (checksum differs"),
    ("manifest", "package.json: corrupted"),
    ("missing", "backend.pt: missing from the package"),
    ("not_a_package", "neither a model package"),
])
def test_other_version_or_corrupted_package_is_refused(tiny_experiment, package, tmp_path, fault, message):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(package, bad)
    manifest = bad / "package.json"
    if fault == "version":
        info = json.loads(manifest.read_text())
        manifest.write_text(json.dumps(dict(info, format_version=99, upmp_version="9.0")))
    elif fault == "weights":
        data = bytearray((bad / "backend.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bad / "backend.pt").write_bytes(bytes(data))
    elif fault == "manifest":
        manifest.write_text(manifest.read_text()[:100])
    elif fault == "missing":
        (bad / "backend.pt").unlink()
    else:
        manifest.unlink()
    import upmp
    from upmp.errors import ModelFileError
    with pytest.raises(ModelFileError, match=message.replace("(", r"\(")) as e:
        upmp.load_model(str(bad))
    assert "\n" not in str(e.value)
    if fault == "version":  # the commands say it in one line, without a traceback
        wav = tiny_experiment / "data/wav/spk0-utt0.wav"
        r = run("upmp.bin.verify", "--model", bad, wav, wav)
        assert r.returncode == 1 and message in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr


# --- packaging other kinds of experiment: cached training on a *_local upstream, a fine-tuned upstream

def package_in_process(capsys, *args):
    """python -m upmp.bin.package_model <args> in this process: (exit status, stderr's error lines)."""
    from upmp.bin import package_model
    from upmp.bin.common import run_main
    capsys.readouterr()
    try:
        run_main(package_model.main, [str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, [ln for ln in capsys.readouterr().err.splitlines() if ": error: " in ln]


def conf_file(tmp_path, **train_conf):
    import yaml
    from helpers import TRAIN_CONFIG
    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump(dict(TRAIN_CONFIG, train_conf=dict(TRAIN_CONFIG["train_conf"], **train_conf))))
    return path


def assert_package_embeds_as_stage3(package, exp, data):
    """The package's embedding of each wav file equals stage 3's xvector of it."""
    import upmp
    want = {k: np.asarray(v) for k, v in kaldiio.load_scp(str(exp / "embeddings/data/xvector.scp")).items()}
    model = upmp.load_model(str(package))
    utts = sorted(want)
    assert len(utts) == 9
    got = model.embed_raw([data / "wav" / f"{u}.wav" for u in utts])
    for u, g in zip(utts, got):
        np.testing.assert_allclose(g, want[u], rtol=0, atol=1e-4, err_msg=u)
    return model


def test_package_cached_training_on_a_local_upstream(small_data_dir, tiny_wavlm, tmp_path, capsys):
    """Stages 1-3 on wavlm_local (layer stacks cached; training records the upstream's name only):
    package_model refuses it without --upstream_ckpt (one line, exit 1, nothing written where --out
    was to go), and with it copies the checkpoint in and embeds each file as stage 3 did."""
    from upmp.bin import extract_embeddings, extract_layers, train
    up = ["--upstream", "wavlm_local", "--upstream_ckpt", str(tiny_wavlm)]
    dump, exp = tmp_path / "dump/wavlm/data", tmp_path / "exp/cached"
    extract_layers.main(["--data_dir", str(small_data_dir), "--out_prefix", str(dump / "layers"), *up])
    train.main(["--config", str(conf_file(tmp_path, steps=6, ckpt_every=6, log_every=3)), "--train_scp",
                str(dump / "layers.scp"), "--utt2spk", str(small_data_dir / "utt2spk"), "--exp_dir", str(exp)])
    extract_embeddings.main(["--model", str(exp / "model.pt"), "--layers_scp", str(dump / "layers.scp"),
                             "--out_dir", str(exp / "embeddings/data"), "--num_threads", "1"])
    before = snapshot(tmp_path, dirs=True)
    code, err = package_in_process(capsys, "--exp_dir", exp, "--out", tmp_path / "models/cached")
    assert code == 1 and len(err) == 1, err
    assert err[0].split(": error: ", 1)[1] == (f"{exp}: the upstream wavlm_local was trained from a local checkpoint "
                      "that the experiment does not record (cached layer stacks); give it with --upstream_ckpt")
    assert snapshot(tmp_path, dirs=True) == before  # no package, lock, temporary or parent dir left
    from upmp.fileio import file_sha256
    from upmp.upstream.tiny import build_tiny_checkpoint
    other = build_tiny_checkpoint("wavlm", str(tmp_path / "other" / "wavlm_tiny.pt"), num_layers=2, dim=32,
                                  ffn_dim=64, heads=2, conv_dim=32, seed=1)   # the same shape, other weights
    before = snapshot(tmp_path, dirs=True)
    code, err = package_in_process(capsys, "--exp_dir", exp, "--out", tmp_path / "models/cached",
                                   "--upstream_ckpt", other)
    assert code == 1 and len(err) == 1, err
    assert err[0].split(": error: ", 1)[1] == (
        f"{other}: sha256 {file_sha256(other)[:12]}..., but {exp / 'model.pt'} was trained on layer stacks of "
        f"wavlm_local with weights sha256 {file_sha256(tiny_wavlm)[:12]}... (layer_stack.json): package it with "
        f"the checkpoint those stacks were extracted with (--upstream_ckpt)")
    assert snapshot(tmp_path, dirs=True) == before
    # stage 3 with those other weights, from audio or from their stacks: refused as well
    extract_layers.main(["--data_dir", str(small_data_dir), "--out_prefix", str(tmp_path / "dump/other/layers"),
                         "--upstream", "wavlm_local", "--upstream_ckpt", str(other)])
    for source in (["--data_dir", str(small_data_dir), "--upstream", "wavlm_local", "--upstream_ckpt", str(other)],
                   ["--layers_scp", str(tmp_path / "dump/other/layers.scp")]):
        from upmp.errors import UpstreamError   # (run_main makes it the one-line error, exit 1)
        with pytest.raises(UpstreamError) as e:
            extract_embeddings.main(["--model", str(exp / "model.pt"), *source, "--out_dir", str(tmp_path / "emb_other")])
        assert not (tmp_path / "emb_other" / "xvector.scp").exists()
        assert str(e.value).endswith(f"layer stacks of wavlm_local with weights sha256 {file_sha256(other)[:12]}..., but the "
                               f"model was trained on stacks of its weights sha256 {file_sha256(tiny_wavlm)[:12]}...; "
                               f"give the checkpoint the training stacks were extracted with (--upstream_ckpt), or "
                               f"pass --allow_other_upstream if this is intended"), e.value

    code, err = package_in_process(capsys, "--exp_dir", exp, "--out", tmp_path / "models/cached",
                                   "--upstream_ckpt", tiny_wavlm)
    assert code == 0, err
    pkg = tmp_path / "models/cached"
    info = json.loads((pkg / "package.json").read_text())
    assert info["upstream"]["name"] == "wavlm_local" and not info["finetuned_upstream"]
    assert (pkg / info["upstream"]["ckpt"]).read_bytes() == tiny_wavlm.read_bytes()
    assert not (pkg / "upstream.pt").exists()
    assert_package_embeds_as_stage3(pkg, exp, small_data_dir)


def test_package_fine_tuned_upstream(small_data_dir, tiny_wavlm, tmp_path, capsys):
    """Online training that fine-tuned wavlm_local: the package holds its weights (upstream.pt, the
    ones in model.pt, not the original checkpoint's) and embeds each file as stage 3 did."""
    from upmp.bin import extract_embeddings, train
    exp = tmp_path / "exp/tuned"
    train.main(["--config", str(conf_file(tmp_path, steps=4, ckpt_every=4, log_every=2, crop_seconds=0.5,
                                          finetune_upstream=True)),
                "--train_data_dir", str(small_data_dir), "--upstream", "wavlm_local", "--upstream_ckpt", str(tiny_wavlm),
                "--exp_dir", str(exp)])
    extract_embeddings.main(["--model", str(exp / "model.pt"), "--data_dir", str(small_data_dir),
                             "--out_dir", str(exp / "embeddings/data"), "--num_threads", "1"])
    code, err = package_in_process(capsys, "--exp_dir", exp, "--out", tmp_path / "pkg")
    assert code == 0, err
    pkg = tmp_path / "pkg"
    info = json.loads((pkg / "package.json").read_text())
    assert info["finetuned_upstream"] and info["upstream"]["name"] == "wavlm_local"
    tuned = torch.load(exp / "model.pt", weights_only=True)["upstream"]["state"]
    packed = torch.load(pkg / "upstream.pt", weights_only=True)
    assert packed.keys() == tuned.keys() and all(torch.equal(packed[k], tuned[k]) for k in tuned)
    assert (pkg / info["upstream"]["ckpt"]).read_bytes() == tiny_wavlm.read_bytes()
    model = assert_package_embeds_as_stage3(pkg, exp, small_data_dir)
    # the same backend on the original (not fine-tuned) upstream embeds otherwise: the check above can fail
    from upmp.checkpoint import load_model, load_upstream
    from upmp.data.kaldi_dir import DataDir
    from upmp.embeddings import embed_stacks
    from upmp.upstream.source import UpstreamStacks
    data = DataDir.load(small_data_dir)
    backend, _ = load_model(str(exp / "model.pt"))
    original = embed_stacks(backend, list(UpstreamStacks(load_upstream("wavlm_local", str(tiny_wavlm), "cpu"),
                                                         small_data_dir, "wavlm_local").stacks(data.utts)))
    assert not np.allclose(original, model.embed_raw([data.wav_scp[u] for u in data.utts]), atol=1e-4)
