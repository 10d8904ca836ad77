"""Training on cached layer stacks: determinism, resume, outputs, config errors."""
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from helpers import TRAIN_CONFIG as CONFIG
import forkserver  # test/forkserver.py
from helpers import train
from upmp.data.crops import wrap_crop
from upmp.train.data import LayerStackCrops
from upmp.data.layer_stacks import LayerStackMeta, LayerStackWriter


def test_wrap_crop():
    m = np.arange(5)[:, None]
    assert wrap_crop(m, 1, 3)[:, 0].tolist() == [1, 2, 3]
    assert wrap_crop(m, 3, 8)[:, 0].tolist() == [3, 4, 0, 1, 2, 3, 4, 0]


def test_batches_depend_only_on_seed_and_step(dump):
    a = LayerStackCrops(str(dump / "dump/layers.scp"), str(dump / "utt2spk"), 3, 20, 4, seed=1)
    b = LayerStackCrops(str(dump / "dump/layers.scp"), str(dump / "utt2spk"), 3, 20, 4, seed=1, preload=False)
    xa, ya = a.batch(5)
    xb, yb = b.batch(5)
    assert xa.shape == (4, 8, 3, 20)
    torch.testing.assert_close(xa, xb)
    assert ya.tolist() == yb.tolist()
    assert not torch.equal(a.batch(6)[0], xa)


def test_train_outputs_and_determinism(dump):
    r = train(dump, dump / "exp1")
    assert r.returncode == 0, r.stderr
    exp = dump / "exp1"
    for name in ("model.pt", "config.yaml", "versions.json", "train.log", "train_metrics.tsv",
                 "train_curve.png", "layer_usage.png", "checkpoints/last.pt"):
        assert (exp / name).is_file(), name
    rows = (exp / "train_metrics.tsv").read_text().splitlines()
    assert rows[0] == "step\tloss\taccuracy\tlr\tmargin" and [r.split()[0] for r in rows[1:]] == ["4", "8", "12"]
    assert yaml.safe_load((exp / "config.yaml").read_text())["train_conf"]["steps"] == 12
    assert "torch" in (exp / "versions.json").read_text()
    import json

    from upmp.checkpoint import load_model
    summary = json.loads((exp / "train_summary.json").read_text())
    model, _ = load_model(str(exp / "model.pt"))
    assert summary["num_params"] == sum(p.numel() for p in model.parameters()) and summary["step"] == 12
    assert summary["num_speakers"] == 3 and summary["world_size"] == 1 and summary["train_seconds"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(exp / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [4, 8, 12]
    r = train(dump, dump / "exp2")
    a = torch.load(exp / "model.pt", weights_only=True)["model"]
    b = torch.load(dump / "exp2" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_kill_matches_uninterrupted_run(dump):
    import os
    import signal
    import time
    args = ["--train_conf.steps", "300", "--train_conf.ckpt_every", "20", "--train_conf.log_every", "20"]
    assert train(dump, dump / "full", *args).returncode == 0
    cmd = [sys.executable, "-m", "upmp.bin.train", "--config", str(dump / "conf.yaml"), "--train_scp",
           str(dump / "dump" / "layers.scp"), "--utt2spk", str(dump / "utt2spk"), "--exp_dir", str(dump / "cut"), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = dump / "cut" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (dump / "cut" / "model.pt").exists(), "training finished before it could be killed"
    step = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < step < 300
    r = train(dump, dump / "cut", *args)
    assert r.returncode == 0 and f"resumed from {ckpt} at step {step}" in r.stderr
    a = torch.load(dump / "full" / "model.pt", weights_only=True)["model"]
    b = torch.load(dump / "cut" / "model.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_unknown_override_is_an_error(dump):
    r = train(dump, dump / "x", "--train_conf.stesp", "3")
    assert r.returncode == 1 and "unknown config key 'train_conf.stesp'" in r.stderr
    assert not (dump / "x" / "model.pt").exists()


def test_config_errors_are_one_line_and_write_nothing(dump):
    """Issue-12 config faults through the entry point: exit 1, one line naming key and value, no traceback."""
    (dump / "typo.yaml").write_text(yaml.safe_dump(dict(CONFIG, train_conf=dict(CONFIG["train_conf"], stpes=5))))
    cases = [(("--train_conf.batch_size", "abc"), "train_conf.batch_size: 'abc' is not allowed: expected an integer >= 1"),
             (("--train_conf.steps", "10"), "exactly 1 warm-up step"),
             (("--backend_conf.convdim", "8"), "unknown config key 'backend_conf.convdim'"),
             (("--config", str(dump / "typo.yaml")), "unknown config key 'train_conf.stpes'")]
    for args, message in cases:
        r = train(dump, dump / "x", *args)
        assert r.returncode == 1 and message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (dump / "x").exists()


def test_resolved_config_records_every_key(dump):
    from upmp.train.schema import defaults
    assert train(dump, dump / "exp").returncode == 0
    cfg = yaml.safe_load((dump / "exp/config.yaml").read_text())
    expect = defaults().to_dict()
    assert cfg.keys() == expect.keys() and all(cfg[k].keys() == expect[k].keys() for k in expect
                                               if isinstance(expect[k], dict))
    assert cfg["optim_conf"]["lr"] == 3e-3 and cfg["train_conf"]["steps"] == 12 and cfg["loss_conf"]["heads"] == 1
    assert torch.load(dump / "exp/model.pt", weights_only=True)["config"] == cfg


def test_extract_embeddings_batched_equals_single(dump):
    import kaldiio
    assert train(dump, dump / "exp").returncode == 0
    outs = {}
    for name, frames in (("batched", 10000), ("single", 1)):
        r = forkserver.run("upmp.bin.extract_embeddings", "--model", str(dump / "exp/model.pt"),
                            "--layers_scp", str(dump / "dump/layers.scp"), "--utt2spk", str(dump / "utt2spk"),
                            "--out_dir", str(dump / name), "--max_batch_frames", str(frames))
        assert r.returncode == 0, r.stderr
        outs[name] = dict(kaldiio.load_scp(str(dump / name / "xvector.scp")))
    assert sorted(outs["batched"]) == [f"s{s}-u{u}" for s in range(3) for u in range(3)]
    for k, v in outs["single"].items():
        assert v.shape == (8,)
        np.testing.assert_allclose(outs["batched"][k], v, atol=1e-5)
    spk = dict(kaldiio.load_scp(str(dump / "single" / "spk_xvector.scp")))
    members = [outs["single"][f"s1-u{u}"] for u in range(3)]
    np.testing.assert_allclose(spk["s1"], np.mean([m / np.linalg.norm(m) for m in members], axis=0), atol=1e-6)


def test_extract_embeddings_rejects_other_layer_stacks(dump):
    assert train(dump, dump / "exp").returncode == 0
    LayerStackMeta(5, 8, 0.02, "other").write(str(dump / "dump"))
    r = forkserver.run("upmp.bin.extract_embeddings", "--model", str(dump / "exp/model.pt"),
                        "--layers_scp", str(dump / "dump/layers.scp"), "--out_dir", str(dump / "o"))
    assert r.returncode == 1 and "layer stacks are L=5 x D=8 (other) but the model was trained on L=3 x D=8" in r.stderr


def test_multi_crop_embeddings():
    from upmp.embeddings import crops, embed_utterances
    stack = np.arange(2 * 10 * 3, dtype=np.float32).reshape(2, 10, 3)
    cs = crops(stack, 4, 3)
    assert [c.shape for c in cs] == [(2, 4, 3)] * 3
    np.testing.assert_array_equal(cs[0], stack[:, 0:4])
    np.testing.assert_array_equal(cs[2], stack[:, 6:10])
    np.testing.assert_array_equal(crops(stack, 14, 1)[0][:, 10:], stack[:, :4])  # wrapped
    from upmp.backends import SpeakerEmbeddingModel
    torch.manual_seed(0)
    model = SpeakerEmbeddingModel("upmp", 3, 2, use_hidden0=True,
                                  backend_conf=dict(conv_dim=4, heads=2, embed_dim=6)).eval()
    rng = np.random.default_rng(0)
    stacks = [rng.normal(size=(2, t, 3)).astype(np.float32) for t in (12, 30)]
    full = embed_utterances(model, stacks)
    # one crop as long as the utterance = the full utterance, length-normalised
    one = embed_utterances(model, stacks[:1], crop_frames=12, num_crops=1)
    np.testing.assert_allclose(one[0], full[0] / np.linalg.norm(full[0]), atol=1e-5)
    multi = embed_utterances(model, stacks, crop_frames=8, num_crops=3)
    assert multi.shape == (2, 6)


def test_online_embeddings_equal_cached(small_data_dir, tiny_wavlm, tmp_path):
    """Embeddings straight from audio equal those from cached float32 layer stacks."""
    import kaldiio
    dump = tmp_path / "dump"
    r = forkserver.run("upmp.bin.extract_layers", "--data_dir", str(small_data_dir),
                        "--out_prefix", str(dump / "layers"), "--upstream", "wavlm_local",
                        "--upstream_ckpt", str(tiny_wavlm))
    assert r.returncode == 0, r.stderr
    cfg = dict(CONFIG, train_conf=dict(CONFIG["train_conf"], steps=4, crop_seconds=0.3))
    (tmp_path / "conf.yaml").write_text(yaml.safe_dump(cfg))
    r = forkserver.run("upmp.bin.train", "--config", str(tmp_path / "conf.yaml"),
                        "--train_scp", str(dump / "layers.scp"), "--utt2spk", str(small_data_dir / "utt2spk"),
                        "--exp_dir", str(tmp_path / "exp"))
    assert r.returncode == 0, r.stderr
    common = ["upmp.bin.extract_embeddings", "--model", tmp_path / "exp/model.pt"]
    r1 = forkserver.run(*common, "--layers_scp", dump / "layers.scp", "--out_dir", tmp_path / "cached")
    r2 = forkserver.run(*common, "--data_dir", small_data_dir, "--upstream", "wavlm_local", "--upstream_ckpt",
                        tiny_wavlm, "--out_dir", tmp_path / "online")
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    cached = dict(kaldiio.load_scp(str(tmp_path / "cached/xvector.scp")))
    online = dict(kaldiio.load_scp(str(tmp_path / "online/xvector.scp")))
    assert sorted(cached) == sorted(online) and len(cached) == 9
    for k in cached:
        np.testing.assert_allclose(online[k], cached[k], atol=1e-4)
    assert (tmp_path / "online" / "spk_xvector.scp").read_text().count("\n") == 3


def test_layer_usage_reports_each_backend():
    from upmp.analysis import layer_usage
    from upmp.backends import SpeakerEmbeddingModel
    x = torch.randn(2, 8, 4, 20)
    small = {"upmp": dict(conv_dim=4, heads=2, embed_dim=8), "lap": dict(heads=2, channels=8, embed_dim=8),
             "superb_ecapa": dict(ndim=8, output_size=16, embed_dim=8), "xvector": dict(ndim=8, output_size=16)}
    for name, conf in small.items():
        m = SpeakerEmbeddingModel(name, 8, 4, use_hidden0=True, backend_conf=conf)
        usage = layer_usage(m, x)
        assert usage and all(a.shape[-1] == 4 for a in usage.values()), name
    u = layer_usage(SpeakerEmbeddingModel("upmp", 8, 4, use_hidden0=True, backend_conf=small["upmp"]), x)
    np.testing.assert_allclose(u["VAD mixing, block 1 (row: output layer)"].sum(axis=1), 1.0, rtol=1e-6)
    scores = u["layer attention score (row: head)"]
    assert scores.shape == (2, 4) and np.all((scores > 0) & (scores < 1))
    # the scores are what the pooling computes on this batch, not a side effect of an earlier forward
    m = SpeakerEmbeddingModel("upmp", 8, 4, use_hidden0=True, backend_conf=small["upmp"]).eval()
    first = layer_usage(m, x)["layer attention score (row: head)"]
    m(torch.randn(3, 8, 4, 11))
    np.testing.assert_array_equal(layer_usage(m, x)["layer attention score (row: head)"], first)
    assert not hasattr(m.backend.layer_pooling, "last_scores")


def test_backends_implement_the_interface():
    from upmp.backends import BACKENDS, SpeakerEmbeddingModel
    from upmp.backends.base import Backend
    assert all(issubclass(cls, Backend) for cls in BACKENDS.values())

    class NoUsage(Backend):
        def forward(self, x, mask=None):
            return x.mean(dim=(2, 3))
    with pytest.raises(TypeError, match="abstract method"):
        NoUsage()
    BACKENDS["plain"] = torch.nn.Identity
    try:
        with pytest.raises(TypeError, match="must derive from upmp.backends.base.Backend"):
            SpeakerEmbeddingModel("plain", 8, 4)
    finally:
        del BACKENDS["plain"]


def test_validation_keeps_the_best_checkpoint(dump):
    utts = [f"s{s}-u{u}" for s in range(3) for u in range(3)]
    trials = [(a, b, a[:2] == b[:2]) for i, a in enumerate(utts) for b in utts[i + 1:]]
    (dump / "valid_trials").write_text("".join(f"{a} {b} {'target' if t else 'nontarget'}\n" for a, b, t in trials))
    r = train(dump, dump / "exp", "--train_conf.valid_every", "4", "--valid_scp", str(dump / "dump/layers.scp"),
              "--valid_trials", str(dump / "valid_trials"))
    assert r.returncode == 0, r.stderr
    rows = [l.split("\t") for l in (dump / "exp/valid_metrics.tsv").read_text().splitlines()[1:]]
    assert [int(s) for s, _ in rows] == [4, 8, 12]
    eers = [float(e) for _, e in rows]
    best = torch.load(dump / "exp/model.pt", weights_only=True)
    assert best["valid_eer"] == pytest.approx(min(eers), abs=1e-3)
    assert best["step"] == [4, 8, 12][int(np.argmin(eers))]
    assert (dump / "exp/model_last.pt").is_file() and "validation EER" in r.stderr
    ckpt = torch.load(dump / "exp/checkpoints/best.pt", weights_only=True)
    assert all(torch.equal(ckpt["model"][k], best["model"][k]) for k in best["model"])
    r = train(dump, dump / "exp2", "--valid_scp", str(dump / "dump/layers.scp"))
    assert r.returncode == 1 and "--valid_scp and --valid_trials go together" in r.stderr


def test_speaker_balanced_sampling_and_spanout(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    utt2spk = {}
    with LayerStackWriter(str(d / "layers"), "float32") as w:
        for s, n in (("a", 20), ("b", 1)):  # a speaker with 20 utterances, one with 1
            for u in range(n):
                w.write(f"{s}-{u:02d}", np.ones((2, 30, 4), dtype=np.float32))
                utt2spk[f"{s}-{u:02d}"] = s
    (tmp_path / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s in sorted(utt2spk.items())))
    common = (str(d / "layers.scp"), str(tmp_path / "utt2spk"), 2, 20, 200)
    uniform = LayerStackCrops(*common, seed=0)
    balanced = LayerStackCrops(*common, seed=0, sampling="speaker_balanced")
    share_b = lambda crops: (crops.batch(0)[1] == 1).float().mean().item()  # noqa: E731
    assert share_b(uniform) < 0.15 and 0.35 < share_b(balanced) < 0.65
    spans = LayerStackCrops(*common, seed=0, spanout_prob=1.0, spanout_span=3, spanout_rate=0.1)
    x, _ = spans.batch(3)
    zero_frames = (x == 0).all(dim=1).all(dim=1)  # (B, T): frames zeroed in every channel and layer
    assert 0.05 < zero_frames.float().mean().item() < 0.5
    assert torch.equal(spans.batch(3)[0], x)  # still a function of (seed, step)
    with pytest.raises(ValueError, match="sampling must be one of"):
        LayerStackCrops(*common, seed=0, sampling="balanced")


def test_multi_head_and_subcenter_losses():
    from upmp.losses import build_loss
    from upmp.train.schema import check_train_config

    def conf(loss, **keys):
        return check_train_config({"loss": loss, "loss_conf": keys}).loss_conf
    torch.manual_seed(0)
    x, y = torch.randn(16, 12, requires_grad=True), torch.randint(0, 5, (16,))
    single = build_loss("aamsoftmax", 12, 5, conf("aamsoftmax"))
    three = build_loss("aamsoftmax", 12, 5, conf("aamsoftmax", heads=3))
    assert len(three.heads) == 3 and three.heads[0].weight.shape == (5, 4)
    sub = build_loss("aamsoftmax_subcenter_topk", 12, 5, conf("aamsoftmax_subcenter_topk", heads=2, subcenters=3, topk=2))
    assert sub.heads[0].weight.shape == (15, 6)
    for loss_fn in (single, three, sub):
        loss, acc = loss_fn(x, y)
        loss.backward()
        assert loss.item() > 0 and 0 <= acc.item() <= 1
    # one head equals espnet2's AAM-softmax itself
    from espnet2.spk.loss.aamsoftmax import AAMSoftmax as Espnet
    ref = Espnet(nout=12, nclasses=5, margin=0.2, scale=30)
    ref.load_state_dict(single.heads[0].state_dict())
    assert single(x, y)[0].item() == pytest.approx(ref(x, y)[0].item())
    with pytest.raises(ValueError, match="must split into 5 equal heads"):
        build_loss("aamsoftmax", 12, 5, conf("aamsoftmax", heads=5))


class _Payload:
    """A pickle that, when unpickled, runs a shell command writing a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def _extract(model, dump, out):
    return forkserver.run("upmp.bin.extract_embeddings", "--model", str(model),
                           "--layers_scp", str(dump / "dump/layers.scp"), "--out_dir", str(out))


def test_malicious_model_file_does_not_run(dump):
    from upmp.checkpoint import load_model
    from upmp.errors import ModelFileError
    marker = dump / "pwned"
    evil = dump / "evil.pt"
    torch.save({"format": "upmp-model", "version": 1, "config": {}, "layer_stack": {}, "model": _Payload(marker)},
               evil)
    with pytest.raises(ModelFileError, match=r"evil\.pt: refused: holds Python objects beyond tensors"):
        load_model(str(evil))
    r = _extract(evil, dump, dump / "o")
    assert r.returncode == 1 and "refused" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (dump / "o" / "xvector.scp").exists()
    assert not marker.exists()
    import pickle
    import zipfile
    with zipfile.ZipFile(evil) as z:  # the file is a real exploit: a plain unpickling runs it
        pickle.loads(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))))
    assert marker.exists()


def test_broken_model_files_are_one_line_errors(dump):
    from upmp.checkpoint import load_model
    from upmp.errors import ModelFileError
    assert train(dump, dump / "exp").returncode == 0
    good = (dump / "exp/model.pt").read_bytes()
    state = torch.load(dump / "exp/model.pt", weights_only=True)
    cases = {
        "truncated.pt": (good[:len(good) // 2], "truncated or corrupt torch archive"),
        "empty.pt": (b"", "an empty file; expected a upmp model"),
        "random.pt": (np.random.default_rng(0).bytes(4096), "not a torch zip archive"),
    }
    for name, (data, _) in cases.items():
        (dump / name).write_bytes(data)
    torch.save({"model": state["model"]}, dump / "foreign.pt")  # a state dict, not our model.pt
    cases["foreign.pt"] = (None, "no upmp format tag (not written by upmp)")
    torch.save({k: v for k, v in state.items() if k not in ("format", "version")}, dump / "old.pt")  # before the tags
    cases["old.pt"] = (None, "written by upmp before 2026-12-01 (commit f48a2cd), whose files this version does not "
                             "read; retrain it, or use a upmp checkout older than f48a2cd; expected a upmp model")
    torch.save({k: v for k, v in state.items() if k != "layer_stack"}, dump / "partial.pt")
    cases["partial.pt"] = (None, "incomplete a upmp model (model.pt): missing layer_stack")
    torch.save(dict(state, version=99), dump / "future.pt")
    cases["future.pt"] = (None, "format version 99; this upmp reads version 1 only")
    for name, (_, message) in cases.items():
        with pytest.raises(ModelFileError, match=re.escape(f"{dump / name}: ") + ".*" + re.escape(message)):
            load_model(str(dump / name))
    for name in ("truncated.pt", "foreign.pt"):
        r = _extract(dump / name, dump, dump / f"o_{name}")
        assert r.returncode == 1 and cases[name][1] in r.stderr and str(dump / name) in r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (dump / "exp/checkpoints/last.pt").write_bytes(good[:100])  # a broken resume checkpoint
    r = train(dump, dump / "exp")
    assert r.returncode == 1 and "last.pt: truncated or corrupt" in r.stderr and "Traceback" not in r.stderr


def test_non_finite_loss_stops_training(dump):
    import kaldiio
    d = dump / "dump"
    stacks = dict(kaldiio.load_scp(str(d / "layers.scp")))
    bad = stacks["s1-u2"].copy()
    bad[:, 5] = np.nan  # every frame of one channel: any crop of it
    (dump / "nan").mkdir()
    with LayerStackWriter(str(dump / "nan" / "layers"), "float32") as w:
        for utt in sorted(stacks):
            w.write(utt, (bad if utt == "s1-u2" else stacks[utt]).reshape(-1, 3, 8).transpose(1, 0, 2))
    LayerStackMeta(3, 8, 0.02, "test").write(str(dump / "nan"))
    r = forkserver.run("upmp.bin.train", "--config", str(dump / "conf.yaml"),
                        "--train_scp", str(dump / "nan" / "layers.scp"), "--utt2spk", str(dump / "utt2spk"),
                        "--exp_dir", str(dump / "exp"), "--train_conf.ckpt_every", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert re.search(r"error: step \d+: the training loss is nan on the batch of utterances [^;]*s1-u2", last), last
    step = int(re.search(r"step (\d+):", last).group(1))
    assert not (dump / "exp" / "model.pt").exists()
    if step > 1:  # the checkpoint written before holds finite weights of the step before
        state = torch.load(dump / "exp" / "checkpoints" / "last.pt", weights_only=True)
        assert state["step"] == step - 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_failed_run_keeps_the_experiment_config(dump):
    assert train(dump, dump / "exp").returncode == 0
    before = {n: (dump / "exp" / n).read_bytes() for n in ("config.yaml", "model.pt")}
    r = train(dump, dump / "exp", "--train_conf.steps", "20")
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "holds the results of another config" in r.stderr and "train_conf.steps = 12, now 20" in r.stderr
    # a run that fails during set-up (here: a missing utt2spk) in a fresh dir leaves no config.yaml
    r = forkserver.run("upmp.bin.train", "--config", str(dump / "conf.yaml"), "--train_scp",
                        str(dump / "dump/layers.scp"), "--utt2spk", str(dump / "missing"), "--exp_dir",
                        str(dump / "exp2"))
    assert r.returncode == 1 and "Traceback" not in r.stderr and not (dump / "exp2" / "config.yaml").exists()
    assert {n: (dump / "exp" / n).read_bytes() for n in before} == before
    r = train(dump, dump / "exp", "--train_conf.num_workers", "1")  # a speed-only key may change: same model
    assert r.returncode == 0, r.stderr


def test_loader_workers_give_the_same_model(dump):
    """Batches are built in 2 DataLoader worker processes (the paper configs' default): same weights."""
    assert train(dump, dump / "w0").returncode == 0
    r = train(dump, dump / "w2", "--train_conf.num_workers", "2")
    assert r.returncode == 0, r.stderr
    a = torch.load(dump / "w0" / "model.pt", weights_only=True)["model"]
    b = torch.load(dump / "w2" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
