"""The lap, superb_ecapa and xvector backends through stages 1-5, packaging and ONNX export, each
result checked independently: the recipes' conf/train_<backend>.yaml (tiny sizes), cached GE2E
layer stacks, validation every 4 steps. superb_ecapa and xvector are not padding-neutral, so
stage 3 embeds them one utterance at a time (upmp/embeddings.py), and the export's check
(upmp/export.py, check_onnx) compares a padded batch with the torch graph on the same batch and
each utterance alone with stage 3; lap batches."""
import json
import shutil

import kaldiio
import numpy as np
import pytest
import soundfile
import torch

from helpers import ROOT, write_data_dir
from reference_metrics import act_dcf, cllr, eer_percent, min_dcf, read_scored_trials, results_md_rows

SIZES = {"lap": {"channels": 8, "heads": 2, "embed_dim": 8},
         "superb_ecapa": {"ndim": 16, "output_size": 24, "embed_dim": 8},
         "xvector": {"ndim": 16, "output_size": 24, "embed_dim": 8}}
BACKENDS = list(SIZES)
NOT_PADDING_NEUTRAL = ["superb_ecapa", "xvector"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """<root>/data/{train,test} (4 speakers x 3 tones each) and data/valid (a copy of test),
    dump/<set>/layers.scp (GE2E), and for each backend exp/<backend> (stages 2-5: 8 steps, validation
    at 4 and 8, cosine and PLDA scores calibrated on valid), pkg/<backend> and onnx/<backend>{,.wav}.onnx."""
    from upmp.bin import (export_onnx, extract_embeddings, extract_layers, package_model, score_sets, train,
                          write_results)
    from upmp.data.kaldi_dir import DataDir
    from upmp.data.trials import make_balanced_trials, write_kaldi_trials
    root = tmp_path_factory.mktemp("backends")
    for name, first in (("train", 0), ("test", 4)):
        utts = {f"spk{s}-utt{u}": (f"spk{s}", 0.7 + 0.25 * u + 0.1 * s, 130 + 70 * s + 11 * u)
                for s in range(first, first + 4) for u in range(3)}
        data = write_data_dir(root / "data" / name, utts)
        write_kaldi_trials(str(data / "trials"), make_balanced_trials(DataDir.load(data).utt2spk, seed=0))
        extract_layers.main(["--data_dir", str(data), "--out_prefix", str(root / "dump" / name / "layers"),
                             "--upstream", "ge2e", "--purpose", "train"])
    shutil.copytree(root / "data/test", root / "data/valid")
    shutil.copytree(root / "dump/test", root / "dump/valid")
    for backend, sizes in SIZES.items():
        exp = root / "exp" / backend
        overrides = [a for k, v in sizes.items() for a in (f"--backend_conf.{k}", str(v))]
        train.main(["--config", str(ROOT / f"egs/mini/sv1/conf/train_{backend}.yaml"), "--exp_dir", str(exp),
                    "--train_scp", str(root / "dump/train/layers.scp"), "--utt2spk", str(root / "data/train/utt2spk"),
                    "--valid_scp", str(root / "dump/test/layers.scp"), "--valid_trials", str(root / "data/test/trials"),
                    "--train_conf.steps", "8", "--train_conf.batch_size", "8", "--train_conf.crop_seconds", "0.5",
                    "--train_conf.valid_every", "4", "--train_conf.log_every", "4", "--train_conf.ckpt_every", "8",
                    "--train_conf.num_threads", "1", *overrides])
        for name in ("train", "valid", "test"):
            extract_embeddings.main(["--model", str(exp / "model.pt"), "--layers_scp", str(root / "dump" / name / "layers.scp"),
                                     "--utt2spk", str(root / "data" / name / "utt2spk"),
                                     "--out_dir", str(exp / "embeddings" / name), "--num_threads", "1"])
        score_sets.main(["--exp_dir", str(exp), "--data_root", str(root / "data"), "--train_set", "train",
                         "--valid_set", "valid", "--test_sets", "test", "--scoring", "cosine", "plda", "--lda_dim", "3"])
        write_results.main(["--exp_dir", str(exp), "--systems", "cosine", "plda", "--data_root", str(root / "data"),
                            "--test_sets", "test", "--upstream", "ge2e"])
        package_model.main(["--exp_dir", str(exp), "--out", str(root / "pkg" / backend)])
        export_onnx.main(["--model", str(root / "pkg" / backend), "--out", str(root / "onnx" / f"{backend}.onnx"),
                          "--num_threads", "1"])
    return root


def cached_stacks(root, name="test"):
    """{utt: (L, T, D)} of dump/<name>, in utterance order."""
    from upmp.data.kaldi_dir import read_table
    from upmp.data.layer_stacks import load_stack
    entries = read_table(root / "dump" / name / "layers.scp")
    return {u: load_stack(entries[u], 4) for u in sorted(entries)}


def stage3(root, backend, name="test"):
    scp = root / "exp" / backend / "embeddings" / name / "xvector.scp"
    return {u: np.asarray(v) for u, v in kaldiio.load_scp(str(scp)).items()}


def padded(stacks):
    """List of (L, T_i, D) -> (B, D, L, max T) zero-padded tensor, (B, max T) mask, by hand."""
    T = max(s.shape[1] for s in stacks)
    x = torch.zeros(len(stacks), stacks[0].shape[2], stacks[0].shape[0], T)
    mask = torch.zeros(len(stacks), T, dtype=torch.bool)
    for i, s in enumerate(stacks):
        x[i, :, :, :s.shape[1]] = torch.tensor(s).permute(2, 0, 1)
        mask[i, :s.shape[1]] = True
    return x, mask


@torch.no_grad()
def by_hand(model, stacks):
    """Each (L, T, D) stack alone through the module (no padding): (N, E)."""
    return np.stack([model(torch.tensor(s).permute(2, 0, 1)[None])[0].numpy() for s in stacks])


@pytest.mark.parametrize("backend", BACKENDS)
def test_stage3_embeddings_equal_the_module_one_utterance_at_a_time(trained, backend):
    """xvector.scp = each utterance alone through model.pt's module. For the backends that are not
    padding-neutral a padded batch gives other embeddings for the padded rows (why stage 3 does
    not batch them); lap's padded batch equals the single utterances."""
    from upmp.checkpoint import load_model
    model, _ = load_model(str(trained / "exp" / backend / "model.pt"))
    stacks = cached_stacks(trained)
    utts = list(stacks)
    want = by_hand(model, [stacks[u] for u in utts])
    got = stage3(trained, backend)
    assert sorted(got) == utts
    np.testing.assert_allclose(np.stack([got[u] for u in utts]), want, atol=1e-5)
    with torch.no_grad():
        batch = model(*padded([stacks[u] for u in utts])).numpy()
    shorter = [i for i, u in enumerate(utts) if stacks[u].shape[1] < max(s.shape[1] for s in stacks.values())]
    if backend in NOT_PADDING_NEUTRAL:
        assert not model.padding_invariant
        # (float rounding is ~1e-7 of the scale; the tiny models move the padded rows by ~3e-4)
        assert all(np.abs(batch[i] - want[i]).max() > 1e-4 * np.abs(want[i]).max() for i in shorter)
    else:
        assert model.padding_invariant
        np.testing.assert_allclose(batch, want, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_package_embeds_as_stage3(trained, backend):
    """The packaged model (GE2E + backend) on the wav files gives stage 3's xvector.scp."""
    from upmp.inference import load_model
    model = load_model(str(trained / "pkg" / backend))
    want = stage3(trained, backend)
    utts = sorted(want)
    got = model.embed_raw([trained / "data/test/wav" / f"{u}.wav" for u in utts])
    np.testing.assert_allclose(got, np.stack([want[u] for u in utts]), atol=1e-4)
    # the package's scorer: cosine after subtracting the training set's mean embedding (stage 3's)
    train_mean = np.mean(list(stage3(trained, backend, "train").values()), axis=0)
    np.testing.assert_allclose(model.scorer.mean, train_mean, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_onnx_graphs_equal_torch(trained, backend):
    """onnxruntime on each utterance alone (waveform and backend graphs) gives xvector.scp; on a
    padded batch the backend graph gives the torch module's answer on that same batch."""
    import onnxruntime as ort
    from upmp.checkpoint import load_model
    side = json.loads((trained / "onnx" / f"{backend}.onnx.json").read_text())
    assert set(side["graphs"]) == {"backend", "full"}
    full = ort.InferenceSession(str(trained / "onnx" / f"{backend}.wav.onnx"), providers=["CPUExecutionProvider"])
    graph = ort.InferenceSession(str(trained / "onnx" / f"{backend}.onnx"), providers=["CPUExecutionProvider"])
    want, stacks = stage3(trained, backend), cached_stacks(trained)
    utts = sorted(want)
    for u in utts[::3]:
        wav = soundfile.read(trained / "data/test/wav" / f"{u}.wav", dtype="float32")[0]
        got = full.run(None, {"wavs": wav[None], "wav_lens": np.array([len(wav)])})[0][0]
        np.testing.assert_allclose(got, want[u], atol=1e-4)
        s = stacks[u]
        got = graph.run(None, {"stack": s.transpose(2, 0, 1)[None].copy(), "lengths": np.array([s.shape[1]])})[0][0]
        np.testing.assert_allclose(got, want[u], atol=1e-4)
    model, _ = load_model(str(trained / "exp" / backend / "model.pt"))
    x, mask = padded([stacks[u] for u in utts])
    got = graph.run(None, {"stack": x.numpy(), "lengths": mask.sum(1).numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x, mask).numpy(), atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cosine_scores_equal_hand_computed(trained, backend):
    """Stage 4's test.cosine: cosine of the two sides' xvector.scp embeddings, trial by trial."""
    emb = stage3(trained, backend)
    trials = [line.split() for line in (trained / "data/test/trials").read_text().splitlines()]
    scores, _ = read_scored_trials(trained / "data/test/trials", trained / "exp" / backend / "scores/test.cosine")
    want = [emb[a] @ emb[b] / np.linalg.norm(emb[a]) / np.linalg.norm(emb[b]) for a, b, _ in trials]
    np.testing.assert_allclose(scores, want, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_equal_independent_metrics(trained, backend):
    """results.json and RESULTS.md hold EER (%), minDCF 0.01 / 0.05, Cllr and actDCF of the score
    files, as computed from the definitions (test/reference_metrics.py)."""
    exp = trained / "exp" / backend
    results = json.loads((exp / "results.json").read_text())["results"]
    table = results_md_rows(exp / "RESULTS.md")
    assert set(results) == {"test/cosine", "test/plda"} and set(table) == {("test", "cosine"), ("test", "plda")}
    for system in ("cosine", "plda"):
        scores, labels = read_scored_trials(trained / "data/test/trials", exp / "scores" / f"test.{system}")
        llr, llr_labels = read_scored_trials(trained / "data/test/trials", exp / "scores" / f"test.{system}.llr")
        np.testing.assert_array_equal(llr_labels, labels)
        want = {"eer": eer_percent(scores, labels), "mindcf_0.01": min_dcf(scores, labels, 0.01),
                "mindcf_0.05": min_dcf(scores, labels, 0.05), "cllr": cllr(llr, labels),
                "actdcf_0.01": act_dcf(llr, labels, 0.01), "actdcf_0.05": act_dcf(llr, labels, 0.05),
                "n_target": int(labels.sum()), "n_nontarget": int((~labels).sum())}
        got = results[f"test/{system}"]
        assert set(got) == set(want)
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=1e-9), (system, key)
        row = table["test", system]
        for cell, key, digits in zip(row, ("eer", "mindcf_0.01", "mindcf_0.05", "cllr", "actdcf_0.01"), (2, 4, 4, 3, 4)):
            assert float(cell) == pytest.approx(want[key], abs=0.51 * 10 ** -digits), (system, key, cell)
        assert row[5] == f"{want['n_target']} / {want['n_nontarget']}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_validation_eer_selects_model(trained, backend):
    """valid_metrics.tsv's EER at each step = the EER computed here from the checkpoint of that step
    (model.pt: the selected step, model_last.pt: step 8) embedding the validation set one utterance
    at a time; model.pt is the step with the lowest EER (the first of equals), as train_summary.json says."""
    from upmp.checkpoint import load_model, read_model
    exp = trained / "exp" / backend
    rows = np.loadtxt(exp / "valid_metrics.tsv", skiprows=1)
    steps, eers = rows[:, 0].astype(int), rows[:, 1]
    assert list(steps) == [4, 8]
    summary = json.loads((exp / "train_summary.json").read_text())
    best = int(np.argmin(eers))
    assert summary["step"] == steps[best] == read_model(str(exp / "model.pt"))["step"]
    assert summary["valid_eer"] == pytest.approx(eers[best], abs=1e-4)
    stacks = cached_stacks(trained)
    trials = [line.split() for line in (trained / "data/test/trials").read_text().splitlines()]
    labels = np.array([t == "target" for *_, t in trials])
    for name, step in (("model.pt", steps[best]), ("model_last.pt", 8)):
        model, _ = load_model(str(exp / name))
        emb = dict(zip(stacks, by_hand(model, list(stacks.values()))))
        scores = [emb[a] @ emb[b] / np.linalg.norm(emb[a]) / np.linalg.norm(emb[b]) for a, b, _ in trials]
        assert eers[list(steps).index(step)] == pytest.approx(eer_percent(scores, labels), abs=1e-4), name
