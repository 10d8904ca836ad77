"""upmp.analysis's layer probe (upmp.bin.layer_probe): the EER of each hidden state of cached layer
stacks, on a synthetic set where one hidden state carries the speaker and the others are noise."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from helpers import one_line_error, run_module

L, D, SPEAKER_LAYER = 4, 8, 2


def write_set(directory: Path, speakers, utts_per_spk: int, seed: int, num_layers: int = L, layers=None):
    """Layer stacks (float16 ark/scp + layer_stack.json) of speakers x utts_per_spk utterances: hidden
    state SPEAKER_LAYER is the speaker's mean vector plus noise, every other one noise only. Returns
    (layers.scp, utt2spk, {utt: (L, T, D) float32 as stored})."""
    from upmp.data.layer_stacks import LayerStackMeta, LayerStackWriter
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    stacks = {}
    with LayerStackWriter(str(directory / "layers"), "float16") as w:
        for spk in speakers:
            centre = 1.5 * np.random.default_rng(1000 + spk).normal(size=D)
            for u in range(utts_per_spk):
                stack = rng.normal(size=(num_layers, int(rng.integers(30, 60)), D))
                stack[min(SPEAKER_LAYER, num_layers - 1)] += centre
                utt = f"spk{spk:02d}-utt{u}"
                w.write(utt, stack)
                stacks[utt] = stack.astype(np.float16).astype(np.float32)
    LayerStackMeta(num_layers, D, 0.02, "synthetic", storage="float16", layers=layers).write(str(directory))
    utt2spk = directory / "utt2spk"
    utt2spk.write_text("".join(f"{u} {u.split('-')[0]}\n" for u in sorted(stacks)))
    return directory / "layers.scp", utt2spk, stacks


@pytest.fixture
def probe_sets(tmp_path):
    """Training: 12 speakers x 6 utterances; trials: every pair of 10 other speakers x 4 utterances."""
    from upmp.data.trials import write_kaldi_trials
    train_scp, utt2spk, _ = write_set(tmp_path / "train", range(12), 6, seed=1)
    test_scp, _, test_stacks = write_set(tmp_path / "valid", range(20, 30), 4, seed=2)
    trials = tmp_path / "valid" / "trials"
    write_kaldi_trials(str(trials), [(a, b, a.split("-")[0] == b.split("-")[0])
                                     for a, b in itertools.combinations(sorted(test_stacks), 2)])
    args = ["--train_scp", train_scp, "--utt2spk", utt2spk, "--trials_scp", test_scp, "--trials", trials]
    return tmp_path, [str(a) for a in args], test_stacks


def probe(*args):
    from upmp.bin.layer_probe import main
    main([str(a) for a in args])


def test_the_speaker_layer_comes_out_best_by_a_wide_margin(probe_sets):
    from upmp.analysis import read_layer_probe
    tmp, args, _ = probe_sets
    probe(*args, "--out_dir", tmp / "probe")
    rows = read_layer_probe(tmp / "probe" / "layer_probe.tsv")
    assert [r["layer"] for r in rows] == ["0", "1", "2", "3", "avg"]
    for r in rows[:L]:
        for method in ("cosine", "plda"):
            if r["layer"] == str(SPEAKER_LAYER):
                assert r[f"eer_{method}"] < 10, rows
            else:
                assert r[f"eer_{method}"] > 35, rows
    # the average of the layers keeps a quarter of the speaker's mean: better than noise
    assert rows[-1]["eer_plda"] < 25, rows
    assert (tmp / "probe" / "layer_probe.png").stat().st_size > 5000


def test_a_layer_subset_is_labelled_with_the_upstreams_hidden_states(tmp_path):
    """Stacks of --layers 0,4,8,12 (stored as 4 hidden states): the rows are hidden states 0, 4, 8 and 12,
    the speaker's (stored third) is 8, and top:1 of the probe's tsv picks hidden state 8 of the upstream."""
    from upmp.analysis import read_layer_probe
    from upmp.data.layer_stacks import parse_layers
    from upmp.data.trials import write_kaldi_trials
    subset = [0, 4, 8, 12]
    train_scp, utt2spk, _ = write_set(tmp_path / "train", range(12), 6, seed=1, layers=subset)
    test_scp, _, test_stacks = write_set(tmp_path / "valid", range(20, 30), 4, seed=2, layers=subset)
    trials = tmp_path / "valid" / "trials"
    write_kaldi_trials(str(trials), [(a, b, a.split("-")[0] == b.split("-")[0])
                                     for a, b in itertools.combinations(sorted(test_stacks), 2)])
    probe("--train_scp", train_scp, "--utt2spk", utt2spk, "--trials_scp", test_scp, "--trials", trials,
          "--out_dir", tmp_path / "probe")
    rows = read_layer_probe(tmp_path / "probe" / "layer_probe.tsv")
    assert [r["layer"] for r in rows] == ["0", "4", "8", "12", "avg"]
    assert min(rows[:L], key=lambda r: r["eer_plda"])["layer"] == str(subset[SPEAKER_LAYER])
    assert parse_layers(f"top:1:{tmp_path / 'probe' / 'layer_probe.tsv'}", num_layers=13) == [subset[SPEAKER_LAYER]]


def test_tsv_format_and_the_cosine_eer_computed_by_hand(probe_sets):
    """The header, the counts, LDA capped at speakers - 1, and the cosine EER of the speaker layer
    recomputed here from the stacks as written (mean + std pooling, training mean subtracted)."""
    from upmp.data.kaldi_dir import read_table
    from upmp.data.trials import read_kaldi_trials
    from upmp.metrics import compute_eer
    tmp, args, test_stacks = probe_sets
    probe(*args, "--out_dir", tmp / "probe")
    lines = (tmp / "probe" / "layer_probe.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["layer", "eer_cosine", "eer_plda", "mindcf_0.05_cosine", "mindcf_0.05_plda",
                                    "lda_dim", "n_train_utts", "n_speakers", "n_trials"]
    assert len(lines) == 1 + L + 1
    row = dict(zip(lines[0].split("\t"), lines[1 + SPEAKER_LAYER].split("\t")))
    assert (row["lda_dim"], row["n_train_utts"], row["n_speakers"], row["n_trials"]) == ("11", "72", "12", "780")

    import kaldiio

    def pooled(scp, utt):
        x = np.asarray(kaldiio.load_mat(read_table(scp)[utt]), dtype=np.float64)[:, SPEAKER_LAYER * D:(SPEAKER_LAYER + 1) * D]
        return np.concatenate([x.mean(0), x.std(0)])
    train_scp, test_scp, trials = args[1], args[5], args[7]
    mean = np.mean([pooled(train_scp, u) for u in read_table(train_scp)], axis=0)
    emb = {u: pooled(test_scp, u) - mean for u in test_stacks}
    t = read_kaldi_trials(trials)
    scores = [emb[a] @ emb[b] / np.linalg.norm(emb[a]) / np.linalg.norm(emb[b]) for a, b, _ in t]
    expected = 100 * compute_eer(np.array(scores), np.array([x for _, _, x in t]))
    assert float(row["eer_cosine"]) == pytest.approx(expected, abs=1e-3)


def test_up_to_date_tsv_is_reused_and_changed_options_recompute(probe_sets):
    tmp, args, _ = probe_sets
    out = tmp / "probe"
    probe(*args, "--out_dir", out)
    tsv = out / "layer_probe.tsv"
    before = tsv.stat().st_mtime_ns
    probe(*args, "--out_dir", out)
    assert tsv.stat().st_mtime_ns == before
    probe(*args, "--out_dir", out, "--lda_dim", 5, "--max_frames", 20)
    assert tsv.stat().st_mtime_ns != before
    assert {line.split("\t")[5] for line in tsv.read_text().splitlines()[1:]} == {"5"}
    assert "--lda_dim 5" in (out / "layer_probe.opts").read_text()


def test_experiment_plot_beside_the_model(probe_sets):
    """--exp_dirs: <exp>/layer_probe.png from the model's layer usage; a model of other stacks is one line."""
    import torch
    from upmp.backends import SpeakerEmbeddingModel
    from upmp.checkpoint import save_model
    from upmp.data.layer_stacks import LayerStackMeta
    from upmp.errors import UpstreamError
    tmp, args, _ = probe_sets
    cfg = {"backend": "upmp", "use_hidden0": False, "backend_conf": {"conv_dim": 4, "heads": 2, "embed_dim": 8}}
    for name, layers in (("ok", L), ("other", L + 1)):
        torch.manual_seed(0)
        model = SpeakerEmbeddingModel("upmp", D, layers, False, cfg["backend_conf"])
        (tmp / name).mkdir()
        save_model(tmp / name / "model.pt", {"config": cfg, "model": model.state_dict(),
                                             "layer_stack": vars(LayerStackMeta(layers, D, 0.02, "synthetic"))})
    probe(*args, "--out_dir", tmp / "probe", "--exp_dirs", tmp / "ok")
    assert (tmp / "ok" / "layer_probe.png").stat().st_size > 5000
    with pytest.raises(UpstreamError, match=r"model.pt .*: layer stacks are L=4 x D=8 \(synthetic\) but the model "
                                            r"was trained on L=5 x D=8"):
        probe(*args, "--out_dir", tmp / "probe2", "--exp_dirs", tmp / "ok", tmp / "other")
    assert not (tmp / "other" / "layer_probe.png").exists()
    assert not (tmp / "probe2").exists()  # refused before any work


def test_bad_inputs_are_one_line_naming_the_file(probe_sets, monkeypatch):
    from upmp.errors import ConfigError, DataDirError
    tmp, args, _ = probe_sets
    train_scp, utt2spk, test_scp, trials = args[1], args[3], args[5], args[7]
    # trials naming an utterance without a stack
    bad_trials = tmp / "bad_trials"
    bad_trials.write_text(Path(trials).read_text() + "spk20-utt0 spk99-utt0 nontarget\n")
    with pytest.raises(DataDirError, match=rf"^{bad_trials}:781: utterance 'spk99-utt0' has no layer stack in "
                                           rf"{test_scp} \(1 trial utterance\(s\) without one\); give the layers.scp"):
        probe(*args[:7], bad_trials, "--out_dir", tmp / "out")
    # one speaker: no LDA
    one = tmp / "one_spk"
    one.write_text("".join(f"{line.split()[0]} spk00\n" for line in Path(utt2spk).read_text().splitlines()))
    with pytest.raises(DataDirError, match=rf"^{one}: the training stacks {train_scp} hold 1 speaker\(s\), 1 of "
                                           r"them with 2 or more utterances; LDA / PLDA need at least 2"):
        probe(*args[:3], one, *args[4:], "--out_dir", tmp / "out")
    # pooled statistics over half the RAM (here a machine of 64 KiB): refused before reading a stack
    monkeypatch.setattr("upmp.analysis.os.sysconf", lambda name: 4096 if name == "SC_PAGE_SIZE" else 16)
    with pytest.raises(ConfigError, match=rf"^{train_scp}: the pooled statistics of 72 training and 40 trial "
                                          r"utterances need 0.0 GiB, .*; fit on fewer with --max_utts_per_spk N$"):
        probe(*args, "--out_dir", tmp / "out")
    assert not (tmp / "out").exists()


def test_layer_count_mismatch_exits_with_one_line(probe_sets):
    """Trial stacks of another L: exit 1, one line naming both scps, nothing written."""
    tmp, args, _ = probe_sets
    other_scp, _, _ = write_set(tmp / "other", range(20, 23), 2, seed=3, num_layers=L - 1)
    r = run_module("upmp.bin.layer_probe", *args[:5], other_scp, *args[6:], "--out_dir", tmp / "out")
    one_line_error(r, f"{other_scp}: layer stacks of 3 hidden states x 8 dims (synthetic), but {args[1]} has 4 x 8",
                   "give stacks of one upstream for both sets")
    assert not (tmp / "out").exists()
