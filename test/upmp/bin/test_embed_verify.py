"""upmp-embed / upmp-verify / upmp-results (upmp/bin/embed.py, verify.py, results.py)."""
import json
import logging
import shutil

import kaldiio
import numpy as np
import pytest

from helpers import bash_env
import forkserver  # test/forkserver.py
from upmp.bin.common import run_main


@pytest.fixture(scope="module")
def inputs(tiny_experiment, tmp_path_factory):
    """The 12 utterances given four ways: a file, a folder tree, a wav.scp and a data dir."""
    src = tiny_experiment / "data/wav"
    root = tmp_path_factory.mktemp("inputs")
    for u in range(3):
        (root / "folder/spk1/x").mkdir(parents=True, exist_ok=True)
        shutil.copy(src / f"spk1-utt{u}.wav", root / "folder/spk1/x" / f"{u:05d}.wav")
    (root / "wav.scp").write_text("".join(f"spk2-utt{u} {src}/spk2-utt{u}.wav\n" for u in range(3)))
    (root / "data").mkdir()
    (root / "data/wav.scp").write_text("".join(f"spk3-utt{u} {src}/spk3-utt{u}.wav\n" for u in range(3)))
    (root / "data/utt2spk").write_text("".join(f"spk3-utt{u} spk3\n" for u in range(3)))
    ids = {"spk0-utt0": "spk0-utt0", **{f"spk1/x/{u:05d}": f"spk1-utt{u}" for u in range(3)},
           **{f"spk{s}-utt{u}": f"spk{s}-utt{u}" for s in (2, 3) for u in range(3)}}
    return root, [str(src / "spk0-utt0.wav"), str(root / "folder"), str(root / "wav.scp"), str(root / "data")], ids


def stage3(tiny_experiment):
    return dict(kaldiio.load_scp(str(tiny_experiment / "exp/upmp/embeddings/data/xvector.scp")))


def test_embed_files_folders_wav_scp_from_any_directory(tiny_experiment, inputs, tmp_path):
    root, args, ids = inputs
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    r = forkserver.run("upmp.bin.embed", "--model", str(tiny_experiment / "exp/upmp"),
                        *args, "--out", "emb", "--chunk", "4", "--num_threads", "1", env=bash_env(), cwd=elsewhere)
    assert r.returncode == 0, r.stderr[-3000:]
    got = dict(kaldiio.load_scp(str(elsewhere / "emb/xvector.scp")))
    want = stage3(tiny_experiment)
    assert sorted(got) == sorted(ids)
    keys = [line.split()[0] for line in (elsewhere / "emb/xvector.scp").read_text().splitlines()]
    assert keys == sorted(keys, key=str.encode)  # C-sorted, Kaldi style
    for key, utt in ids.items():
        np.testing.assert_allclose(got[key], want[utt], atol=1e-5)
    assert not (elsewhere / "emb/parts").exists()


def test_embed_resumes_and_reports_bad_audio_in_one_line(tiny_experiment, inputs, tmp_path, capsys, caplog):
    from upmp.bin.embed import main
    root, args, ids = inputs
    model = str(tiny_experiment / "exp/upmp")
    bad_dir = tmp_path / "more"
    bad_dir.mkdir()
    shutil.copy(tiny_experiment / "data/wav/spk0-utt1.wav", bad_dir / "a.wav")
    (bad_dir / "z.wav").write_bytes(b"RIFF not really audio")
    out = tmp_path / "emb"
    run_main(main, ["--model", model, args[0], args[2], "--out", str(out), "--num_threads", "1"])
    first = (out / "xvector.scp").read_text()
    assert first.count("\n") == 4
    with pytest.raises(SystemExit) as e:
        run_main(main, ["--model", model, args[0], args[2], str(bad_dir), "--out", str(out), "--chunk", "1",
                        "--num_threads", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and "z.wav" in err[-1] and "Traceback" not in "\n".join(err)
    assert (out / "xvector.scp").read_text() == first                     # what was complete is intact
    assert len(list((out / "parts").glob("*.scp"))) == 1                   # a.wav's chunk is kept
    (bad_dir / "z.wav").unlink()
    shutil.copy(tiny_experiment / "data/wav/spk0-utt2.wav", bad_dir / "z.wav")
    caplog.set_level(logging.INFO, logger="embed")
    run_main(main, ["--model", model, args[0], args[2], str(bad_dir), "--out", str(out), "--num_threads", "1"])
    assert "6 utterances, 5 already in" in caplog.messages[0]                         # only z.wav is embedded again
    got = dict(kaldiio.load_scp(str(out / "xvector.scp")))
    want = stage3(tiny_experiment)
    np.testing.assert_allclose(got["a"], want["spk0-utt1"], atol=1e-5)
    np.testing.assert_allclose(got["z"], want["spk0-utt2"], atol=1e-5)

    npy = tmp_path / "npy"
    run_main(main, ["--model", model, args[1], "--out", str(npy), "--format", "npy", "--num_threads", "1"])
    v = np.load(npy / "spk1/x/00002.npy", allow_pickle=False)
    np.testing.assert_allclose(v, want["spk1-utt2"], atol=1e-5)


def test_verify_two_files_and_a_trial_list(tiny_experiment, inputs, tmp_path, capsys):
    import upmp
    from upmp.bin.verify import main
    root, args, ids = inputs
    wav = tiny_experiment / "data/wav"
    model_dir = str(tiny_experiment / "exp/upmp")
    r = forkserver.run("upmp.bin.verify", "--model", model_dir, str(wav / "spk0-utt0.wav"),
                        str(wav / "spk0-utt1.wav"), "--json", "--num_threads", "1", env=bash_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout)
    model = upmp.load_model(model_dir)
    want = model.verify(wav / "spk0-utt0.wav", wav / "spk0-utt1.wav")
    assert got["score"] == pytest.approx(want["score"], abs=1e-6) and got["decision"] == want["decision"]
    assert got["llr"] == pytest.approx(want["llr"], abs=1e-5)

    run_main(main, ["--model", model_dir, str(wav / "spk0-utt0.wav"), str(wav / "spk3-utt1.wav")])
    line = capsys.readouterr().out
    assert line.startswith("score ") and "decision" in line

    trials = tmp_path / "trials"
    trials.write_text("spk2-utt0 spk2-utt1 target\nspk2-utt0 spk3-utt2 nontarget\nspk3-utt0 spk3-utt1\n")
    out = tmp_path / "scores"
    run_main(main, ["--model", model_dir, "--trials", str(trials), "--wav_scp", args[2], args[3], "--out", str(out)])
    lines = [line.split() for line in out.read_text().splitlines()]
    assert [(a, b) for a, b, _ in lines] == [("spk2-utt0", "spk2-utt1"), ("spk2-utt0", "spk3-utt2"), ("spk3-utt0", "spk3-utt1")]
    for a, b, s in lines:
        assert float(s) == pytest.approx(model.score(wav / f"{a}.wav", wav / f"{b}.wav"), abs=1e-5)
    llr = [float(line.split()[2]) for line in (tmp_path / "scores.llr").read_text().splitlines()]
    assert llr == pytest.approx([model.llr(float(s)) for _, _, s in lines], abs=1e-4)

    trials.write_text("spk2-utt0 nobody target\n")
    with pytest.raises(SystemExit):
        run_main(main, ["--model", model_dir, "--trials", str(trials), "--wav_scp", args[2], "--out", str(out)])
    assert f"{trials}:1: utterance 'nobody' is not in" in capsys.readouterr().err


def test_results_collects_experiments(tmp_path, capsys):
    import csv
    from upmp.bin.results import main
    recipe = tmp_path / "egs/x/sv1"
    (recipe / "data/test").mkdir(parents=True)
    (recipe / "data/test/trials").write_text("a b target\na c nontarget\nb c nontarget\nc d target\n")
    for name, backend, eer, scores in (("upmp_ge2e", "upmp", 2.5, [0.9, 0.1, 0.2, 0.8]),
                                       ("lap_ge2e", "lap", 7.25, [0.6, 0.7, 0.1, 0.5])):
        exp = recipe / "exp" / name
        (exp / "scores").mkdir(parents=True)
        (exp / "scores/test.cosine").write_text("".join(
            f"{a} {b} {s}\n" for (a, b), s in zip([("a", "b"), ("a", "c"), ("b", "c"), ("c", "d")], scores)))
        (exp / "results.json").write_text(json.dumps({
            "experiment": name, "backend": backend, "upstream": "ge2e", "num_params": 1234, "train_seconds": 5.0,
            "results": {"test/cosine": {"eer": eer, "mindcf_0.01": 0.5, "mindcf_0.05": 0.25, "n_target": 2,
                                        "n_nontarget": 2}}}))
    (recipe / "exp/empty").mkdir()
    out = tmp_path / "cmp/all"
    (tmp_path / "cmp").mkdir()
    run_main(main, [str(d) for d in sorted((recipe / "exp").iterdir())] + ["--out", str(out)])
    md = (tmp_path / "cmp/all.md").read_text()
    assert "| upmp_ge2e | upmp | ge2e | 1,234 | test | cosine | 2.50 | 0.5000 | 0.2500 | - |" in md
    assert "| lap_ge2e | lap |" in md and md in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "cmp/all.csv")))
    assert [(r["experiment"], float(r["eer"])) for r in rows] == [("lap_ge2e", 7.25), ("upmp_ge2e", 2.5)]
    assert (tmp_path / "cmp/all_det.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        run_main(main, [str(recipe / "exp/empty"), "--out", str(out)])
    assert "no results.json" in capsys.readouterr().err


def test_results_groups_seeds_with_mean_and_range(tmp_path, capsys):
    """<name>_seed<N> runs (sv.sh --seeds) are one group: mean and range by hand; a run of the same
    name without a seed, and a metric only one seed has (cllr), stay apart."""
    from upmp.bin.results import main
    from upmp.results import seed_of
    assert seed_of("upmp_ge2e_seed12_lmft") == ("upmp_ge2e_lmft", 12)
    assert seed_of("upmp_ge2e_seeds") == ("upmp_ge2e_seeds", None)
    exp_root = tmp_path / "exp"
    runs = {"upmp_ge2e": 4.0, "upmp_ge2e_seed0": 6.5, "upmp_ge2e_seed1": 9.25, "upmp_ge2e_seed2": 8.0}
    for name, eer in runs.items():
        (exp_root / name).mkdir(parents=True)
        metrics = {"eer": eer, "mindcf_0.01": eer / 10, "mindcf_0.05": eer / 20, "n_target": 2, "n_nontarget": 2}
        if name.endswith("seed1"):
            metrics["cllr"] = 0.5
        (exp_root / name / "results.json").write_text(json.dumps({
            "experiment": name, "backend": "upmp", "upstream": "ge2e", "num_params": 10,
            "train_seconds": {"upmp_ge2e_seed1": 30.0}.get(name, 10.0), "results": {"test/cosine": metrics}}))
    out = tmp_path / "cmp"
    run_main(main, [str(d) for d in sorted(exp_root.iterdir())] + ["--out", str(out)])
    groups = json.loads((tmp_path / "cmp.json").read_text())["groups"]
    by_seeds = {tuple(g["seeds"]): g for g in groups}
    assert set(by_seeds) == {(None,), (0, 1, 2)}
    g = by_seeds[(0, 1, 2)]
    assert g["experiment"] == "upmp_ge2e" and g["n"] == 3
    assert g["eer"] == pytest.approx((6.5 + 9.25 + 8.0) / 3) and (g["eer_min"], g["eer_max"]) == (6.5, 9.25)
    assert g["mindcf_0.05"] == pytest.approx((6.5 + 9.25 + 8.0) / 60)
    assert g["train_seconds"] == pytest.approx(50 / 3) and "cllr" not in g
    assert by_seeds[(None,)]["eer"] == 4.0
    md = (tmp_path / "cmp.md").read_text()
    assert "| upmp_ge2e | upmp | ge2e | 10 | 0, 1, 2 | test | cosine | 7.92 (6.50 - 9.25) | 0.7917 (0.6500 - 0.9250) |" in md
    assert "| upmp_ge2e | upmp | ge2e | 10 | - | test | cosine | 4.00 | 0.4000 |" in md
    assert "| upmp_ge2e_seed1 | upmp | ge2e | 10 | test | cosine | 9.25 | 0.9250 | 0.4625 | 0.500 |" in md
    capsys.readouterr()
