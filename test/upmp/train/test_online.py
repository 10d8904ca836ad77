"""Online training: the upstream runs in the training loop on waveform crops (frozen or
fine-tuned), batch sharding, and the input checks."""
import logging

import kaldiio
import numpy as np
import pytest
import torch
import yaml

from helpers import TRAIN_CONFIG, bash_env
import forkserver  # test/forkserver.py
from upmp.errors import ConfigError
from upmp.train.data import LayerStackCrops, WaveformCrops


def test_waveform_crops_are_a_function_of_the_step_and_shard_by_rank(small_data_dir, dump):
    crops = WaveformCrops(str(small_data_dir), 16000, 6, seed=3)
    x, y = crops.batch(2)
    assert x.shape == (6, 16000) and x.dtype == torch.float32 and y.shape == (6,)
    torch.testing.assert_close(WaveformCrops(str(small_data_dir), 16000, 6, seed=3, preload=True).batch(2)[0], x)
    assert not torch.equal(crops.batch(3)[0], x)
    # rank r of 2 gets rows [3r, 3r+3) of the same global batch
    halves = [crops.batch(2, rank, 2) for rank in (0, 1)]
    torch.testing.assert_close(torch.cat([h[0] for h in halves]), x)
    assert torch.equal(torch.cat([h[1] for h in halves]), y)
    stacks = LayerStackCrops(str(dump / "dump/layers.scp"), str(dump / "utt2spk"), 3, 20, 4, seed=1,
                             spanout_prob=0.5, spanout_rate=0.2)
    full = stacks.batch(5)
    parts = [stacks.batch(5, rank, 2) for rank in (0, 1)]
    torch.testing.assert_close(torch.cat([p[0] for p in parts]), full[0])
    with pytest.raises(ConfigError, match="train_conf.batch_size 6 is the global batch: it must divide evenly over "
                       "the 4 processes"):
        crops.batch(0, 0, 4)


def test_waveform_crops_wrap_short_utterances_and_augment(small_data_dir):
    from upmp.data.audio import load_audio
    from upmp.data.kaldi_dir import DataDir
    data = DataDir.load(small_data_dir)
    n = 4 * 16000  # longer than every utterance (1.0-2.0 s): crops wrap around
    plain = WaveformCrops(str(small_data_dir), n, 4, seed=0)
    x, y = plain.batch(0)
    index = plain.draw(np.random.default_rng([0, 0]))
    for row, i in enumerate(index):
        wav = load_audio(data.wav_scp[plain.utts[i]])
        start = int(np.flatnonzero(np.isclose(wav, x[row, 0].item(), atol=0))[0])  # where the crop begins
        np.testing.assert_array_equal(x[row].numpy(), wav[np.arange(start, start + n) % len(wav)])
    seen = []

    def augment(wav, rng):
        seen.append(rng.random())
        return wav * 0.5
    halved = WaveformCrops(str(small_data_dir), n, 4, seed=0, augment=augment).batch(0)[0]
    torch.testing.assert_close(halved, x * 0.5)
    assert len(seen) == 4 and len(set(seen)) == 4  # one generator per row


def online_config(tmp_path, **train_conf):
    cfg = dict(TRAIN_CONFIG, train_conf=dict(dict(TRAIN_CONFIG["train_conf"], steps=4, batch_size=4, crop_seconds=0.5,
                                                  log_every=2, ckpt_every=2), **train_conf))
    path = tmp_path / f"conf{len(list(tmp_path.glob('conf*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(*args):
    return forkserver.run(*map(str, args), env=bash_env())


def test_online_training_frozen_and_fine_tuned(small_data_dir, tiny_wavlm, tmp_path):
    from upmp.data.kaldi_dir import DataDir
    from upmp.data.trials import make_balanced_trials, write_kaldi_trials
    from upmp.embeddings import embed_stacks
    from upmp.upstream.source import UpstreamStacks
    from upmp.checkpoint import load_model, load_upstream
    trials = tmp_path / "trials"
    write_kaldi_trials(str(trials), make_balanced_trials(DataDir.load(small_data_dir).utt2spk, seed=0))
    up = ["--upstream", "wavlm_local", "--upstream_ckpt", tiny_wavlm]
    frozen, tuned = tmp_path / "frozen", tmp_path / "tuned"
    r = run("upmp.bin.train", "--config", online_config(tmp_path, valid_every=2), "--train_data_dir", small_data_dir,
            "--valid_data_dir", small_data_dir, "--valid_trials", trials, "--exp_dir", frozen, *up)
    assert r.returncode == 0, r.stderr[-3000:]
    state = torch.load(frozen / "model.pt", weights_only=True)
    assert "upstream" not in state and state["layer_stack"]["num_layers"] == 3  # hidden 0 + 2 layers
    assert len(np.loadtxt(frozen / "valid_metrics.tsv", skiprows=1, ndmin=2)) == 2
    assert "upstream wavlm_local frozen" in (frozen / "train.log").read_text()
    assert (frozen / "layer_usage.png").stat().st_size > 0

    r = run("upmp.bin.train", "--config", online_config(tmp_path, finetune_upstream=True), "--train_data_dir",
            small_data_dir, "--exp_dir", tuned, *up)
    assert r.returncode == 0, r.stderr[-3000:]
    state = torch.load(tuned / "model.pt", weights_only=True)
    assert state["upstream"]["name"] == "wavlm_local"
    ckpt = torch.load(tuned / "checkpoints/last.pt", weights_only=True)
    assert [g["max_lr"] for g in ckpt["optimizer"]["param_groups"]] == [3.0e-3, 1.0e-4]  # separate upstream lr
    fresh = load_upstream("wavlm_local", str(tiny_wavlm), "cpu")
    changed = [k for k, v in fresh.state_dict().items() if not torch.equal(v, state["upstream"]["state"][k])]
    assert changed  # the upstream was trained

    # embeddings of the fine-tuned model use its own upstream (no --upstream needed), not the original
    r = run("upmp.bin.extract_embeddings", "--model", tuned / "model.pt", "--data_dir", small_data_dir,
            "--out_dir", tmp_path / "emb")
    assert r.returncode == 0, r.stderr[-3000:]
    got = dict(kaldiio.load_scp(str(tmp_path / "emb/xvector.scp")))
    model, _ = load_model(str(tuned / "model.pt"))
    data = DataDir.load(small_data_dir)
    for finetuned, same in ((model.finetuned_upstream, True), (None, False)):
        upstream = load_upstream("wavlm_local", str(tiny_wavlm), "cpu", finetuned)
        want = embed_stacks(model, list(UpstreamStacks(upstream, small_data_dir, "wavlm_local").stacks(data.utts)))
        assert np.allclose(np.stack([got[u] for u in data.utts]), want, atol=1e-4) == same
    r = run("upmp.bin.extract_embeddings", "--model", tuned / "model.pt", "--layers_scp", tmp_path / "x.scp",
            "--out_dir", tmp_path / "e2")
    assert r.returncode == 1 and "fine-tuned its upstream" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--train_scp", "a.scp", "--train_data_dir", "d"], "give either cached inputs"),
    (["--train_data_dir", "d"], "online training (--train_data_dir) needs --upstream"),
    (["--train_scp", "a.scp"], "--train_scp needs --utt2spk"),
    (["--train_data_dir", "d", "--upstream", "ge2e", "--valid_scp", "v.scp"], "validation data must come in"),
    (["--train_data_dir", "d", "--upstream", "ge2e", "--valid_data_dir", "v"], "--valid_data_dir and --valid_trials"),
])
def test_input_errors(tmp_path, args, message):
    r = run("upmp.bin.train", "--config", online_config(tmp_path), "--exp_dir", tmp_path / "exp", *args)
    assert r.returncode == 1 and message in r.stderr, r.stderr


def test_fine_tuning_and_augmentation_need_online_mode(dump):
    r = run("upmp.bin.train", "--config", dump / "conf.yaml", "--train_scp", dump / "dump/layers.scp",
            "--utt2spk", dump / "utt2spk", "--exp_dir", dump / "exp", "--train_conf.finetune_upstream", "true")
    assert r.returncode == 1 and "need online training" in r.stderr


def test_loader_workers_give_the_same_run(dump):
    """Batches are a function of the step, so building them in worker processes changes nothing."""
    common = ["upmp.bin.train", "--config", dump / "conf.yaml", "--train_scp", dump / "dump/layers.scp",
              "--utt2spk", dump / "utt2spk"]
    for exp, workers in (("w0", 0), ("w2", 2)):
        r = run(*common, "--exp_dir", dump / exp, "--train_conf.num_workers", workers)
        assert r.returncode == 0, r.stderr[-3000:]
    assert (dump / "w0/train_metrics.tsv").read_text() == (dump / "w2/train_metrics.tsv").read_text()


# --- resume after a kill, and augmentation inside training ----------------------------------------

class Killed(Exception):
    """Stands for kill -9: raised where the process would die."""


def die_at_checkpoint(monkeypatch, n):
    """The n-th checkpoint write dies before it starts: the run leaves what a kill -9 between its
    last log row and that checkpoint leaves (rows and validation results past the checkpoint on
    disk, checkpoints/last.pt of the one before). Writes are atomic (test_trainer's real kill -9)."""
    import upmp.checkpoint as checkpoint
    real = checkpoint.save_train_state
    seen = []

    def save(path, content):
        seen.append(content["step"])
        if len(seen) == n:
            monkeypatch.setattr(checkpoint, "save_train_state", real)  # the next run is a new process
            raise Killed(f"killed at step {content['step']}")
        real(path, content)
    monkeypatch.setattr(checkpoint, "save_train_state", save)


def train_online(conf, exp, data, wavlm, trials=None):
    """upmp.bin.train in this process: the resolved config, online inputs (wavlm_local upstream)."""
    from upmp.train.schema import resolve_train_config
    from upmp.train.trainer import Inputs, train
    train(resolve_train_config(str(conf)), Inputs(
        train_data_dir=str(data), upstream="wavlm_local", upstream_ckpt=str(wavlm),
        valid_data_dir=str(data) if trials else None, valid_trials=str(trials) if trials else None), str(exp))


def augment_roots(root):
    """A MUSAN noise set and a RIRS_NOISES simulated room in their layouts (real wav files):
    (musan, rirs, noise {file name: samples}, rir samples)."""
    import soundfile
    noises = {f"noise-free-sound-000{i}.wav": (0.3 * np.random.default_rng(20 + i).standard_normal(16000 + 4000 * i))
              .astype(np.float32) for i in range(2)}  # longer than the crops: a crop adds a contiguous slice
    for name, x in noises.items():
        (root / "musan/noise/free-sound").mkdir(parents=True, exist_ok=True)
        soundfile.write(root / "musan/noise/free-sound" / name, x, 16000, subtype="FLOAT")
    rir = np.random.default_rng(6).standard_normal(1200) * np.exp(-np.arange(1200) / 250.0)
    rir[:30], rir[30] = 0.0, 8.0  # the direct path at sample 30
    rir = rir.astype(np.float32)
    (root / "RIRS_NOISES/simulated_rirs/smallroom/Room001").mkdir(parents=True)
    soundfile.write(root / "RIRS_NOISES/simulated_rirs/smallroom/Room001/Room001-00001.wav", rir, 16000,
                    subtype="FLOAT")
    return root / "musan", root / "RIRS_NOISES", noises, rir


def augment_conf(musan, rirs, prob, snr):
    return {"musan_root": str(musan), "rirs_root": str(rirs), "prob": prob,
            "kinds": {"noise": 1, "music": 0, "babble": 0, "reverb": 1},
            "snr": {"noise": snr, "music": [5, 15], "babble": [13, 20]}, "babble_speakers": [3, 7],
            "rir_sets": ["simulated_rirs"]}


@pytest.mark.parametrize("kind", ["augmented", "fine-tuned"])
def test_online_resume_after_a_kill_equals_the_uninterrupted_run(kind, small_data_dir, tiny_wavlm, tmp_path,
                                                                 monkeypatch, caplog):
    """Online training (the upstream in the loop): frozen with noise + RIR augmentation from real files,
    and with the upstream fine-tuned (and validated). Killed after step 6's log rows, before its
    checkpoint (last.pt holds step 3), then run again, it ends with the uninterrupted run's model.pt
    bit for bit (backend, loss head, fine-tuned upstream), its log rows and its validation rows.
    (Before the fix, the resumed run logged steps 4 and 6 twice, the second time averaged over the
    steps after the checkpoint only.)"""
    extra = {"fine-tuned": {"finetune_upstream": True, "valid_every": 2},
             "augmented": {"augment": augment_conf(*augment_roots(tmp_path)[:2], 0.7, [0, 10])}}[kind]
    conf = online_config(tmp_path, steps=8, log_every=2, ckpt_every=3, **extra)
    trials = None
    if kind == "fine-tuned":
        from upmp.data.kaldi_dir import DataDir
        from upmp.data.trials import make_balanced_trials, write_kaldi_trials
        trials = tmp_path / "trials"
        write_kaldi_trials(str(trials), make_balanced_trials(DataDir.load(small_data_dir).utt2spk, seed=0))
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_online(conf, full, small_data_dir, tiny_wavlm, trials)
    die_at_checkpoint(monkeypatch, 2)
    with pytest.raises(Killed, match="killed at step 6"):
        train_online(conf, cut, small_data_dir, tiny_wavlm, trials)
    assert torch.load(cut / "checkpoints/last.pt", weights_only=True)["step"] == 3
    assert not (cut / "model.pt").exists()
    caplog.set_level(logging.INFO)
    train_online(conf, cut, small_data_dir, tiny_wavlm, trials)
    assert f"resumed from {cut / 'checkpoints/last.pt'} at step 3" in caplog.text
    a, b = (torch.load(e / "model.pt", weights_only=True) for e in (full, cut))
    parts = ["model", "head"] + (["upstream"] if kind == "fine-tuned" else [])
    assert ("upstream" in a) == (kind == "fine-tuned")
    for part in parts:
        sa, sb = (a[part]["state"], b[part]["state"]) if part == "upstream" else (a[part], b[part])
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (part, k)
    assert a["step"] == b["step"] and a.get("valid_eer") == b.get("valid_eer")
    for name in ("train_metrics.tsv",) + (("valid_metrics.tsv",) if trials else ()):
        assert (cut / name).read_text() == (full / name).read_text(), name
    assert [line.split()[0] for line in (cut / "train_metrics.tsv").read_text().splitlines()[1:]] == \
        ["2", "4", "6", "8"]


def test_training_steps_augment_their_crops_as_configured(small_data_dir, tiny_wavlm, tmp_path, monkeypatch):
    """Online training with real MUSAN noise / RIR roots: every crop the model gets in a step
    (prob 1) is its clean crop either reverberated by the RIR (computed here by direct convolution:
    aligned to the direct-path peak, the clean crop's length and power) or plus a slice of a noise
    file at an SNR within train_conf.augment.snr.noise, measured here from the clean crop and the slice."""
    from scipy.signal import correlate

    from upmp.train.trainer import TrainGraph
    musan, rirs, noises, rir = augment_roots(tmp_path)
    lo, hi = 3.0, 8.0
    conf = online_config(tmp_path, steps=3, log_every=3, ckpt_every=3, augment=augment_conf(musan, rirs, 1.0, [lo, hi]))
    seen, real = {}, TrainGraph.forward

    def forward(self, x, labels, step, rows):
        seen[step] = x.detach().numpy().astype(np.float64)
        return real(self, x, labels, step, rows)
    monkeypatch.setattr(TrainGraph, "forward", forward)
    train_online(conf, tmp_path / "exp", small_data_dir, tiny_wavlm)
    assert sorted(seen) == [0, 1, 2]
    seed = yaml.safe_load((tmp_path / "exp/config.yaml").read_text())["seed"]
    clean_crops = WaveformCrops(str(small_data_dir), 8000, 4, seed=seed)  # the same crops, not augmented
    rir64, peak = rir.astype(np.float64), int(np.argmax(np.abs(rir)))
    kinds, snrs = [], []
    for step, batch in seen.items():
        clean = clean_crops.batch(step)[0].numpy().astype(np.float64)
        assert batch.shape == clean.shape == (4, 8000)
        for c, a in zip(clean, batch):
            power = np.mean(c ** 2)
            wet = np.convolve(c, rir64)[peak:peak + len(c)]
            wet *= np.sqrt(power / np.mean(wet ** 2))
            if np.allclose(a, wet, rtol=0, atol=1e-5):
                kinds.append("reverb")
                assert np.mean(a ** 2) == pytest.approx(power, rel=1e-5) and not np.allclose(a, c, atol=1e-3)
                continue
            residual = a - c
            fits = []
            for x in noises.values():
                x = x.astype(np.float64)
                start = int(np.argmax(np.abs(correlate(x, residual, mode="valid", method="fft"))))
                piece = x[start:start + len(c)]
                gain = residual @ piece / (piece @ piece)
                fits.append((np.abs(residual - gain * piece).max(), gain, piece))
            err, gain, piece = min(fits, key=lambda f: f[0])
            assert err < 1e-5 and gain > 0, err  # the residual is a scaled slice of one noise file
            kinds.append("noise")
            snrs.append(10 * np.log10(power / np.mean((gain * piece) ** 2)))
    assert sorted(set(kinds)) == ["noise", "reverb"] and len(kinds) == 12
    assert all(lo - 1e-6 <= s <= hi + 1e-6 for s in snrs), snrs
    assert np.ptp(snrs) > 0.5  # drawn, not fixed
