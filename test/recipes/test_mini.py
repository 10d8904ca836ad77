"""The mini recipe's real run.sh, end to end, on a small synthetic corpus; stage-script behaviour.

test_mini_full.py runs the recipe exactly as README.md does (stages 0-5, default configuration)
once and checks the EER bar; repeatability from the seed is shown here on stages 2-5 of the small
recipe (the suite trains the full mini recipe once, not twice).
"""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import make_recipe, run


@pytest.fixture(scope="module")
def small_recipe(tmp_path_factory):
    recipe = make_recipe(tmp_path_factory.mktemp("recipe"))
    (recipe / "conf" / "corpus.yaml").write_text(
        "num_speakers: 10\nnum_test_speakers: 4\nsessions_per_speaker: 2\nutts_per_session: 2\n"
        "min_seconds: 3.0\nmax_seconds: 4.0\nnj: 2\n")
    r = run(recipe, "--stage", "0", "--stop_stage", "5", "--upstream", "wavlm_local",
            "--local_data_opts", "--seed 0 --valid_speakers 2",
            "--train_args", "--train_conf.steps 20 --train_conf.batch_size 8")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return recipe, r


def test_small_recipe_stages_0_to_5(small_recipe):
    recipe, r = small_recipe
    exp = recipe / "exp" / "upmp_wavlm_local_wavlm_tiny"
    results = (exp / "RESULTS.md").read_text()
    for system in ("cosine", "cosine.asnorm", "plda", "plda.asnorm"):
        assert f"| voxceleb1_test | {system} |" in results
        metrics = json.loads((exp / "results.json").read_text())["results"][f"voxceleb1_test/{system}"]
        assert metrics["n_target"] == 16 and metrics["n_nontarget"] == 16
        assert 0 <= metrics["eer"] <= 100 and 0 <= metrics["cllr"]
        assert (exp / "scores" / f"voxceleb1_test.{system}.llr").is_file()
    assert (exp / "det_voxceleb1_test.png").stat().st_size > 1000
    for d in ("data/voxceleb1_dev", "data/voxceleb1_valid", "data/voxceleb1_test"):
        assert "Successfully validated" in subprocess.run(
            ["utils/validate_data_dir.sh", "--no-text", "--no-feats", d], cwd=recipe, capture_output=True,
            text=True).stdout
    scp = recipe / "dump" / "wavlm_local_wavlm_tiny" / "voxceleb1_test" / "layers.scp"
    assert len(scp.read_text().splitlines()) == 16
    assert (recipe / "dump" / "wavlm_local_wavlm_tiny" / "voxceleb1_test" / "log" / "extract.2.log").is_file()
    assert "Stage 5" in r.stderr and "Successfully finished" in r.stderr


def test_rerun_from_the_seed_is_repeatable_and_seeds_are_grouped(small_recipe):
    """Stages 2-5 again with --seeds "0 1": the seed-0 run repeats the first run (whose seed was the
    default 0) byte for byte, seed 1 is another model, and <exp>_seeds.{md,json} and the backend
    comparison give the mean and range of the two runs' results.json. With --fusion "cosine plda"
    each run also has the fused system (Cllr / actDCF) in its RESULTS.md."""
    recipe, _ = small_recipe
    r = run(recipe, "--stage", "2", "--stop_stage", "5", "--upstream", "wavlm_local", "--seeds", "0 1",
            "--scoring", "cosine plda", "--score_norm", "none", "--fusion", "cosine plda",
            "--train_args", "--train_conf.steps 20 --train_conf.batch_size 8")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = recipe / "exp" / "upmp_wavlm_local_wavlm_tiny"
    seed0, seed1 = (exp.parent / f"{exp.name}_seed{n}" for n in (0, 1))
    for d in (seed0, seed1):
        fused = json.loads((d / "results.json").read_text())["results"]["voxceleb1_test/fusion"]
        assert fused["n_target"] == 16 and 0 <= fused["cllr"] and 0 <= fused["actdcf_0.01"]
        assert f"| voxceleb1_test | fusion | {fused['eer']:.2f} |" in (d / "RESULTS.md").read_text()
        assert json.loads((d / "scores" / "voxceleb1_test.fusion.json").read_text())["systems"] == ["cosine", "plda"]
    for system in ("cosine", "plda"):
        assert (seed0 / "scores" / f"voxceleb1_test.{system}").read_text() == \
            (exp / "scores" / f"voxceleb1_test.{system}").read_text()
        assert (seed1 / "scores" / f"voxceleb1_test.{system}").read_text() != \
            (exp / "scores" / f"voxceleb1_test.{system}").read_text()
    assert "seed: 1" in (seed1 / "config.yaml").read_text().splitlines()
    runs = [json.loads((d / "results.json").read_text())["results"] for d in (seed0, seed1)]
    groups = json.loads((exp.parent / f"{exp.name}_seeds.json").read_text())["groups"]
    (group,) = [g for g in groups if g["system"] == "cosine"]
    eers = [m["voxceleb1_test/cosine"]["eer"] for m in runs]
    assert group["experiment"] == exp.name and group["seeds"] == [0, 1] and group["n"] == 2
    assert group["eer"] == pytest.approx((eers[0] + eers[1]) / 2)
    assert (group["eer_min"], group["eer_max"]) == (min(eers), max(eers))
    md = (exp.parent / f"{exp.name}_seeds.md").read_text()
    cell = f"{sum(eers) / 2:.2f} ({min(eers):.2f} - {max(eers):.2f})"
    assert f"| {exp.name} | upmp | " in md and cell in md
    assert f"| {exp.name} | upmp | " in (recipe / "exp" / "RESULTS.md").read_text()
    assert cell in (recipe / "exp" / "RESULTS.md").read_text()
    r = run(recipe, "--stage", "5", "--stop_stage", "5", "--upstream", "wavlm_local", "--seeds", "0 x")
    assert r.returncode == 1 and "--seeds '0 x': 'x' is not a non-negative integer" in r.stderr


def test_stage_range_and_skipping(small_recipe):
    """Stages 1-2 on complete outputs skip; --layer_probe true probes the stacks after stage 1 and
    puts the model's layer usage beside the probe after stage 2 (reusing the probe's tsv)."""
    recipe, _ = small_recipe
    r = run(recipe, "--stage", "1", "--stop_stage", "2", "--upstream", "wavlm_local", "--layer_probe", "true")
    assert r.returncode == 0, r.stderr
    assert "Stage 1" in r.stderr and "Stage 2" in r.stderr and "Stage 3" not in r.stderr and "Stage 0" not in r.stderr
    assert r.stderr.count("is complete, skipping") == 3
    assert "model.pt exists, skipping" in r.stderr
    probe = recipe / "dump" / "wavlm_local_wavlm_tiny" / "layer_probe"
    num_layers = json.loads((probe.parent / "voxceleb1_dev" / "layer_stack.json").read_text())["num_layers"]
    layers = [line.split("\t")[0] for line in (probe / "layer_probe.tsv").read_text().splitlines()]
    assert layers == ["layer"] + [str(i) for i in range(num_layers)] + ["avg"]
    assert "--trials data/voxceleb1_valid/trials" in (probe / "layer_probe.opts").read_text()
    assert "layer_probe.tsv is up to date" in r.stderr  # stage 2's call reused stage 1's probe
    assert (recipe / "exp" / "upmp_wavlm_local_wavlm_tiny" / "layer_probe.png").stat().st_size > 1000


def test_overlapping_sets_reuse_layer_stacks(small_recipe):
    """A set sharing utterances (same id, same audio) with already extracted sets reuses their
    stacks; the same id with another wav.scp entry is extracted again."""
    import kaldiio

    from upmp.data.kaldi_dir import DataDir
    recipe, _ = small_recipe
    test, valid = DataDir.load(recipe / "data/voxceleb1_test"), DataDir.load(recipe / "data/voxceleb1_valid")
    piped = valid.utts[1]
    mix = DataDir({**{u: test.wav_scp[u] for u in test.utts[:4]}, valid.utts[0]: valid.wav_scp[valid.utts[0]],
                   piped: f"sox {valid.wav_scp[piped]} -t wav - |"},
                  {u: (test.utt2spk.get(u) or valid.utt2spk[u]) for u in test.utts[:4] + valid.utts[:2]})
    mix.write(recipe / "data/voxceleb1_mix")
    r = run(recipe, "--stage", "1", "--stop_stage", "1", "--upstream", "wavlm_local",
            "--test_sets", "voxceleb1_test voxceleb1_mix")
    assert r.returncode == 0, r.stderr[-3000:]
    dump = recipe / "dump" / "wavlm_local_wavlm_tiny"
    assert "6 layer stacks in " + str(Path("dump/wavlm_local_wavlm_tiny/voxceleb1_mix/layers.scp")) + " (5 reused)" in r.stderr
    mixed = dict(line.split(" ", 1) for line in (dump / "voxceleb1_mix/layers.scp").read_text().splitlines())
    original = {}
    for s in ("voxceleb1_test", "voxceleb1_valid"):
        original.update(line.split(" ", 1) for line in (dump / s / "layers.scp").read_text().splitlines())
    assert all(mixed[u] == original[u] for u in mixed if u != piped)  # pointers into the other sets' arks
    assert mixed[piped] != original[piped] and "voxceleb1_mix/layers." in mixed[piped]
    same = kaldiio.load_mat(str(recipe / mixed[piped])) == kaldiio.load_mat(str(recipe / original[piped]))
    assert same.all()  # same audio, same stack


def test_complete_embeddings_and_scores_are_skipped(small_recipe):
    """Stages 3-4 rerun: complete outputs are kept; a changed scoring option rescores only the systems using it."""
    recipe, _ = small_recipe
    exp = recipe / "exp" / "upmp_wavlm_local_wavlm_tiny"
    before = {p: p.read_bytes() for p in (exp / "scores").glob("voxceleb1_test.*")}
    r = run(recipe, "--stage", "3", "--stop_stage", "4", "--upstream", "wavlm_local")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("/xvector.scp is complete, skipping") == 3
    assert r.stderr.count("is up to date, skipping") == 8  # 4 systems x (valid, test)
    assert {p: p.read_bytes() for p in (exp / "scores").glob("voxceleb1_test.*")} == before
    r = run(recipe, "--stage", "4", "--stop_stage", "4", "--upstream", "wavlm_local", "--lda_dim", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    skipped = {line.rsplit("/", 1)[1].split()[0] for line in r.stderr.splitlines() if "is up to date, skipping" in line}
    assert skipped == {"voxceleb1_valid.cosine", "voxceleb1_test.cosine", "voxceleb1_valid.cosine.asnorm",
                       "voxceleb1_test.cosine.asnorm"}  # only the PLDA systems use --lda_dim
    assert (exp / "scores" / "voxceleb1_test.plda.asnorm.opts").read_text().strip() == "--lda_dim 3 --cohort_top_n 20"
    assert (exp / "scores" / "voxceleb1_test.cosine.opts").read_text() == "\n"


def test_online_mode_with_two_processes(small_recipe):
    """--train_mode online: no layer stacks; the upstream runs in training (torchrun, 2 gloo
    processes) and in embedding extraction; the experiment dir is separate from the cached one."""
    recipe, _ = small_recipe
    r = run(recipe, "--stage", "1", "--stop_stage", "5", "--upstream", "wavlm_local", "--train_mode", "online",
            "--train_nproc", "2", "--scoring", "cosine", "--score_norm", "none",
            "--train_args", "--train_conf.steps 6 --train_conf.batch_size 4 --train_conf.valid_every 3")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Stage 1: skipped (--train_mode online" in r.stderr
    exp = recipe / "exp" / "upmp_wavlm_local_wavlm_tiny_online"
    assert "| voxceleb1_test | cosine |" in (exp / "RESULTS.md").read_text()
    assert "2 processes" in (exp / "train.log").read_text()
    assert "--data_dir data/voxceleb1_test" in (exp / "embeddings" / "voxceleb1_test" / "extract.log").read_text()
    assert len((exp / "embeddings" / "voxceleb1_test" / "xvector.scp").read_text().splitlines()) == 16


def test_help_and_unknown_option(small_recipe):
    recipe, _ = small_recipe
    r = run(recipe, "--help")
    assert r.returncode == 0 and "--upstream <name>" in r.stderr and "Stages:" in r.stderr
    r = run(recipe, "--bogus_option", "1")
    assert r.returncode == 1 and "invalid option --bogus_option" in r.stderr
    r = run(recipe, "--tiny_upstream", "maybe")
    assert r.returncode == 1 and 'expected "true" or "false"' in r.stderr
    r = run(recipe, "--fusion", "cosine plda", "--valid_set", "")
    assert r.returncode == 1 and '--fusion "cosine plda" needs --valid_set' in r.stderr
    r = run(recipe, "--fusion", "cosine plda.snorm")
    assert r.returncode == 1 and "--fusion: plda.snorm is not a system of this run (cosine cosine.asnorm plda " \
        "plda.asnorm)" in r.stderr


def test_upstream_swap_by_flag(small_recipe):
    recipe, _ = small_recipe
    r = run(recipe, "--stage", "1", "--stop_stage", "1", "--upstream", "hubert_local")
    assert r.returncode == 0, r.stderr
    assert (recipe / "exp" / "upstream" / "hubert_tiny.pt").is_file()
    assert (recipe / "dump" / "hubert_local_hubert_tiny" / "voxceleb1_test" / "layers.scp").is_file()
    r = run(recipe, "--stage", "1", "--stop_stage", "1", "--upstream", "wavlm_local", "--tiny_upstream", "false")
    assert r.returncode == 1 and "needs --upstream_ckpt" in r.stderr


def test_failing_extraction_job_stops_the_recipe(small_recipe, tmp_path):
    recipe, _ = small_recipe
    r = run(recipe, "--stage", "1", "--stop_stage", "1", "--upstream", "wavlm_local",
            "--upstream_ckpt", str(tmp_path / "missing.pt"), "--tiny_upstream", "false")
    assert r.returncode == 1 and "not found" in r.stderr


def test_bad_audio_in_a_job_names_the_users_wav_scp_line(small_recipe):
    """A job's audio error reaches the console as its last error line, naming data/<set>/wav.scp's
    line (not the split copy under dump/); after the fix only the missing stack is extracted."""
    recipe, _ = small_recipe
    shutil.copytree(recipe / "data" / "voxceleb1_test", recipe / "data" / "broken")
    wav = recipe / "data" / "broken" / "wav.scp"
    lines = wav.read_text().splitlines()
    utt, good = lines[2].split(" ", 1)
    lines[2] = f"{utt} /nonexistent/{utt}.wav"
    wav.write_text("\n".join(lines) + "\n")
    args = ("--stage", "1", "--stop_stage", "1", "--upstream", "wavlm_local", "--train_set", "voxceleb1_dev",
            "--valid_set", "", "--test_sets", "voxceleb1_test broken")
    r = run(recipe, *args)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "run.pl: job failed, log is in dump/wavlm_local_wavlm_tiny/broken/log/extract.1.log" in r.stderr
    assert (f"run.pl: job 1 (dump/wavlm_local_wavlm_tiny/broken/log/extract.1.log): extract_layers.py: error: "
            f"data/broken/wav.scp:3: utterance {utt}: cannot read audio file '/nonexistent/{utt}.wav'") in r.stderr
    assert not (recipe / "dump" / "wavlm_local_wavlm_tiny" / "broken" / "layers.scp").exists()
    lines[2] = f"{utt} {good}"
    wav.write_text("\n".join(lines) + "\n")
    r = run(recipe, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    # the fixed line is voxceleb1_test's audio again: every stack comes from there, and the failed
    # job's ark, which nothing points into, is gone
    assert "16 layer stacks in dump/wavlm_local_wavlm_tiny/broken/layers.scp (16 reused)" in r.stderr
    assert not list((recipe / "dump" / "wavlm_local_wavlm_tiny" / "broken").glob("*.ark"))
    shutil.rmtree(recipe / "data" / "broken")


def test_mhfa_with_lmft_and_qmf(small_recipe):
    """--backend mhfa --lmft true --calibration "linear qmf": the base model and its large-margin fine-tuning
    in their own dirs, each with linear and QMF rows (Cllr / actDCF) in RESULTS.md, both in the comparison;
    with train_conf.average, each one's model_avg.pt scored as <exp>_avg beside it."""
    recipe, _ = small_recipe
    r = run(recipe, "--stage", "2", "--stop_stage", "5", "--upstream", "wavlm_local", "--backend", "mhfa",
            "--lmft", "true", "--calibration", "linear qmf", "--scoring", "cosine", "--score_norm", "none",
            "--train_args", "--train_conf.steps 8 --train_conf.batch_size 8 --lmft_conf.steps 4 "
            "--lmft_conf.valid_every 2 --train_conf.ckpt_every 4 --train_conf.average.last 2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    base = recipe / "exp" / "mhfa_wavlm_local_wavlm_tiny"
    lmft = base.parent / (base.name + "_lmft")
    assert (base / "layer_usage.png").stat().st_size > 1000
    assert f"large-margin fine-tuning from {base.relative_to(recipe)}/model.pt" in (lmft / "train.log").read_text()
    cfg = (lmft / "config.yaml").read_text()
    assert "margin: 0.5" in cfg and "crop_seconds: 4.0" in cfg
    for exp in (base, lmft):
        results = json.loads((exp / "results.json").read_text())["results"]
        assert set(results) == {"voxceleb1_test/cosine", "voxceleb1_test/cosine.qmf"}
        assert all(0 <= m["cllr"] and 0 <= m["actdcf_0.01"] for m in results.values())
        assert "| voxceleb1_test | cosine.qmf |" in (exp / "RESULTS.md").read_text()
        fit = json.loads((exp / "scores" / "voxceleb1_test.cosine.qmf.calibration.json").read_text())
        assert fit["method"] == "qmf" and "min_log_duration" in fit
        assert (exp / "embeddings" / "voxceleb1_valid" / "utt2dur").is_file()
    comparison = (recipe / "exp" / "RESULTS.md").read_text()
    assert f"| {base.name} | mhfa |" in comparison and f"| {lmft.name} | mhfa |" in comparison
    for exp in (base, lmft):
        avg = exp.parent / (exp.name + "_avg")
        assert (avg / "model.pt").resolve() == (exp / "model_avg.pt").resolve()
        assert set(json.loads((avg / "results.json").read_text())["results"]) == {"voxceleb1_test/cosine",
                                                                                  "voxceleb1_test/cosine.qmf"}
        assert f"| {avg.name} | mhfa |" in comparison
    r = run(recipe, "--stage", "4", "--stop_stage", "4", "--upstream", "wavlm_local", "--calibration", "platt")
    assert r.returncode == 1 and "unknown --calibration platt (linear, qmf)" in r.stderr
    # an <exp>_avg/model.pt that is not sv.sh's link (a model made otherwise) is never replaced
    avg_model = base.parent / (base.name + "_avg") / "model.pt"
    avg_model.unlink()
    avg_model.write_bytes(b"a model trained some other way")
    r = run(recipe, "--stage", "5", "--stop_stage", "5", "--upstream", "wavlm_local", "--backend", "mhfa",
            "--scoring", "cosine", "--score_norm", "none", "--calibration", "linear qmf")
    assert r.returncode == 1
    assert (f"{avg_model.relative_to(recipe)} exists and is not the link to {base.relative_to(recipe)}/model_avg.pt: "
            "rename that experiment (or use --exp_tag); nothing replaced") in r.stderr
    assert avg_model.read_bytes() == b"a model trained some other way" and not avg_model.is_symlink()
