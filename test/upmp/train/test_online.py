"""Online training: the upstream runs in the training loop on waveform crops (frozen or
fine-tuned), batch sharding, and the input checks."""
import subprocess
import sys

import kaldiio
import numpy as np
import pytest
import torch
import yaml

from helpers import TRAIN_CONFIG, bash_env
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
    with pytest.raises(ValueError, match="batch_size 6 is not divisible by the 4 processes"):
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
    cfg = dict(TRAIN_CONFIG, train_conf=dict(TRAIN_CONFIG["train_conf"], steps=4, batch_size=4, crop_seconds=0.5,
                                             log_every=2, ckpt_every=2, **train_conf))
    path = tmp_path / f"conf{len(list(tmp_path.glob('conf*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(*args):
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, env=bash_env())


def test_online_training_frozen_and_fine_tuned(small_data_dir, tiny_wavlm, tmp_path):
    from upmp.data.kaldi_dir import DataDir
    from upmp.data.trials import make_balanced_trials, write_kaldi_trials
    from upmp.embeddings import embed_stacks, upstream_stacks
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
        want = embed_stacks(model, list(upstream_stacks(upstream, data, data.utts)))
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
