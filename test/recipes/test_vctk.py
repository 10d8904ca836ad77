"""The VCTK recipe's real run.sh, stages 0-5, on a fake VCTK 0.92 tree with the tiny WavLM upstream.

Offline, so stage 0 takes the regeneration path (the download is pointed at a missing file:// base);
the paper-default configs are cut down by flags (steps, batch, sizes, CPU).
"""
import json
import os

from helpers import ROOT, make_recipe, run
from fakes.vctk import SPEAKERS, expected_utts, make_vctk_092
from upmp.data.kaldi_dir import DataDir
from upmp.data.trials import read_kaldi_trials

VCTK = ROOT / "egs" / "vctk" / "sv1"
FAST = ("--train_conf.steps 20 --train_conf.batch_size 8 --train_conf.crop_seconds 1.0 "
        "--train_conf.valid_every 10 --train_conf.ckpt_every 10 --train_conf.log_every 10 "
        "--train_conf.device cpu --train_conf.num_threads 1 --backend_conf.conv_dim 8")


def test_vctk_recipe_stages_0_to_5(tmp_path):
    corpus = make_vctk_092(tmp_path / "VCTK-Corpus-0.92", seconds=1.2, mics=("mic1",))
    recipe = make_recipe(tmp_path, "vctk")
    r = run(recipe, "--stage", "0", "--stop_stage", "5", "--vctk_root", str(corpus),
            "--local_data_opts", f"--protocol_url {(tmp_path / 'no-repo').as_uri()}",
            "--upstream", "wavlm_local", "--tiny_upstream", "true", "--extract_device", "cpu",
            "--nj", "1", "--score_norm", "none asnorm", "--cohort_top_n", "4", "--train_args", FAST,
            env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "protocol source: regenerated (the paper's repository is not reachable)" in r.stderr
    utts = []
    for name in ("vctk_train", "vctk_valid", "vctk_test"):
        d = DataDir.load(recipe / "data" / name)
        utts += d.utts
        assert (recipe / "data" / name / "spk2gender").is_file()
    assert sorted(utts) == expected_utts(SPEAKERS)
    assert set(os.listdir(recipe / "data")) - {"local"} == {"vctk_test", "vctk_train", "vctk_valid"}
    exp = recipe / "exp" / "upmp_wavlm_local_wavlm_tiny"
    results = (exp / "RESULTS.md").read_text()
    metrics = json.loads((exp / "results.json").read_text())["results"]
    n_target = sum(t for *_, t in read_kaldi_trials(str(recipe / "data/vctk_test/trials")))
    for system in ("cosine", "cosine.asnorm", "plda", "plda.asnorm"):
        assert f"| vctk_test | {system} |" in results
        m = metrics[f"vctk_test/{system}"]
        assert 0 <= m["eer"] <= 100 and m["n_target"] == n_target == 6 and m["n_nontarget"] == 6
    assert (recipe / "exp" / "RESULTS.md").is_file() and "Successfully finished" in r.stderr
