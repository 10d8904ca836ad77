import json
import subprocess
import sys

import kaldiio
import numpy as np
import pytest

from upmp.data.kaldi_dir import DataDirError
from upmp.scoring.cosine import cosine_scores


def test_cosine_against_hand_values():
    emb = {"a": np.array([1.0, 0.0]), "b": np.array([3.0, 3.0]), "c": np.array([0.0, -2.0])}
    s = cosine_scores(emb, [("a", "b", True), ("a", "c", False), ("b", "b", True)])
    np.testing.assert_allclose(s, [1 / np.sqrt(2), 0.0, 1.0])


def test_mean_subtraction():
    emb = {"a": np.array([2.0, 1.0]), "b": np.array([1.0, 2.0])}
    s = cosine_scores(emb, [("a", "b", True)], mean=np.array([1.0, 1.0]))
    np.testing.assert_allclose(s, [0.0], atol=1e-12)


def test_missing_embedding_named():
    with pytest.raises(DataDirError, match=r"no embedding for utterance 'zz'"):
        cosine_scores({"a": np.ones(2)}, [("a", "zz", True)], source="x.scp")


def run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)


def test_score_and_metrics_cli_on_kaldi_files(tmp_path):
    rng = np.random.default_rng(0)
    spk = {f"s{i}": rng.normal(size=16) for i in range(4)}
    emb = {f"s{i}-u{j}": spk[f"s{i}"] + 0.3 * rng.normal(size=16) for i in range(4) for j in range(3)}
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/x.ark,{tmp_path}/x.scp") as w:
        for k in sorted(emb):
            w(k, emb[k].astype(np.float32))
    keys = sorted(emb)
    trials = [(a, b, a.split("-")[0] == b.split("-")[0]) for i, a in enumerate(keys) for b in keys[i + 1:]]
    (tmp_path / "trials").write_text("".join(f"{a} {b} {'target' if t else 'nontarget'}\n" for a, b, t in trials))
    r = run("upmp.bin.score", "--embeddings", f"{tmp_path}/x.scp", "--trials", f"{tmp_path}/trials",
            "--out", f"{tmp_path}/scores")
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "scores").read_text().splitlines()
    assert len(lines) == len(trials)
    a, b, s = lines[0].split()
    expected = emb[a] @ emb[b] / np.linalg.norm(emb[a]) / np.linalg.norm(emb[b])
    assert (a, b) == trials[0][:2] and float(s) == pytest.approx(expected, abs=1e-5)
    r = run("upmp.bin.compute_metrics", f"{tmp_path}/trials", f"{tmp_path}/scores", "--json")
    m = json.loads(r.stdout)
    assert set(m) == {"eer", "mindcf_0.01", "mindcf_0.05", "n_target", "n_nontarget"}
    assert (m["n_target"], m["n_nontarget"]) == (12, 54) and m["eer"] < 10
    r = run("upmp.bin.compute_metrics", f"{tmp_path}/trials", f"{tmp_path}/scores")
    assert "EER:" in r.stdout and "linear interpolation" in r.stdout and "minDCF (P_tar=0.01)" in r.stdout


def test_cli_errors_are_one_line(tmp_path):
    (tmp_path / "trials").write_text("a b target\nc d maybe\n")
    r = run("upmp.bin.compute_metrics", f"{tmp_path}/trials", f"{tmp_path}/missing")
    assert r.returncode == 1 and f"{tmp_path}/trials:2: expected '<utt1> <utt2> target|nontarget'" in r.stderr
    assert "Traceback" not in r.stderr
    (tmp_path / "trials").write_text("a b target\nc d nontarget\n")
    (tmp_path / "scores").write_text("a b 0.5\n")
    r = run("upmp.bin.compute_metrics", f"{tmp_path}/trials", f"{tmp_path}/scores")
    assert r.returncode == 1 and "trials:2: trial 'c d' has no score" in r.stderr
