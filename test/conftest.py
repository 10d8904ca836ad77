"""Shared fixtures: small audio data dirs, tiny upstream checkpoints, a small synthetic corpus, a
trained tiny experiment. Plain helpers (tone, write_data_dir, ...) are in test/helpers.py.

The tests mirror the package: test/upmp/<module path>/test_<module>.py; recipe runs (egs/) are in
test/recipes/, the fault injection across entry points in test/faults/. pytest runs them in
importlib mode (pytest.ini), so files in different directories may share a name.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Before torch loads (here and in every subprocess a test starts): OpenMP threads that wait at a
# barrier sleep instead of spinning, so two test processes on the 2 cores (test/run.sh runs files in
# parallel) slow each other down by the share of the cores they take, not several times over
# (benchmarks/thread_contention.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# No test reaches the network (CI's machine has only package registries). Libraries that download on
# import wait on a network that drops packets instead of refusing them: S3PRL's own hub imports
# g2p_en, which asks NLTK for two data packages (120 s per stalled read, up to 2 h per package), and
# CI hung there once. A proxy on a closed local port makes every urllib / requests / NLTK fetch fail at
# once, in this process and in every process a test starts; loopback stays direct.
os.environ.update({**dict.fromkeys(("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"), "http://127.0.0.1:9"),
                   **dict.fromkeys(("no_proxy", "NO_PROXY"), "localhost,127.0.0.1")})

import numpy as np
import pytest
import soundfile
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from helpers import ...` in every test file

from helpers import (TRAIN_CONFIG, VOX2_VIDEOS, bash_env, dev_speakers, tone,  # noqa: E402
                     write_data_dir)


@pytest.fixture
def small_data_dir(tmp_path) -> Path:
    utts = {f"spk{s}-utt{u}": (f"spk{s}", 1.0 + 0.37 * u + 0.11 * s, 200 + 50 * s + 7 * u)
            for s in range(3) for u in range(3)}
    return write_data_dir(tmp_path / "data", utts)


@pytest.fixture(scope="session")
def tiny_wavlm(tmp_path_factory) -> Path:
    from upmp.upstream.tiny import build_tiny_checkpoint
    return build_tiny_checkpoint("wavlm", str(tmp_path_factory.mktemp("ckpt") / "wavlm_tiny.pt"),
                                 num_layers=2, dim=32, ffn_dim=64, heads=2, conv_dim=32)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A 8-speaker synthetic VoxCeleb1-layout corpus (3 test speakers)."""
    from upmp.recipes.mini_corpus import make_corpus
    root = tmp_path_factory.mktemp("corpus") / "vox1"
    make_corpus(str(root), num_speakers=8, num_test_speakers=3, sessions_per_speaker=2,
                utts_per_session=2, seed=7, num_workers=2, progress=False)
    return root


@pytest.fixture
def dump(tmp_path):
    """Cached layer stacks of 9 random utterances (3 speakers, L=3, D=8) + utt2spk + conf.yaml."""
    from upmp.data.layer_stacks import LayerStackMeta, LayerStackWriter
    rng = np.random.default_rng(0)
    d = tmp_path / "dump"
    d.mkdir()
    with LayerStackWriter(str(d / "layers"), "float32") as w:
        utt2spk = {}
        for s in range(3):
            for u in range(3):
                utt = f"s{s}-u{u}"
                w.write(utt, (rng.normal(size=(3, 10 + 9 * u, 8)) + s).astype(np.float32))
                utt2spk[utt] = f"s{s}"
    LayerStackMeta(3, 8, 0.02, "test").write(str(d))
    (tmp_path / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s in sorted(utt2spk.items())))
    (tmp_path / "conf.yaml").write_text(yaml.safe_dump(TRAIN_CONFIG))
    return tmp_path


@pytest.fixture(scope="session")
def small_vox2(tmp_path_factory):
    """5 real Vox2 dev speaker ids x 2 videos x 2 utterances, m4a (AAC) and the same as wav."""
    root = tmp_path_factory.mktemp("vox2") / "VoxCeleb2"
    procs, originals = [], {}
    for s, spk in enumerate(dev_speakers(5)):
        for v, video in enumerate(VOX2_VIDEOS):
            for n in (1, 2):
                x = tone(1.0 + 0.25 * n + 0.1 * s, 200 + 40 * s + 13 * v + 5 * n, seed=10 * s + 2 * v + n)
                wav = root / "dev" / "wav" / spk / video / f"{n:05d}.wav"
                wav.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(wav, x, 16000, subtype="PCM_16")
                m4a = root / "dev" / "aac" / spk / video / f"{n:05d}.m4a"
                m4a.parent.mkdir(parents=True, exist_ok=True)
                procs.append(subprocess.Popen(["ffmpeg", "-nostdin", "-v", "error", "-threads", "1", "-i", str(wav),
                                               "-c:a", "aac", "-b:a", "64k", str(m4a)]))
                originals[f"{spk}-{video}-{n:05d}"] = x
    assert all(p.wait() == 0 for p in procs)
    meta = ["VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set "]
    meta += [f"{spk} ,n{spk[2:]}0 ,m ,dev " for spk in dev_speakers(5)] + ["id09999 ,n099990 ,f ,test "]
    (root / "vox2_meta.csv").write_text("\n".join(meta) + "\n")
    return root, originals


@pytest.fixture(scope="session")
def tiny_experiment(tmp_path_factory) -> Path:
    """A trained experiment as stages 2-3 leave it (GE2E upstream online, UPMP backend, a
    validation list): <root>/exp/upmp with model.pt and embeddings/data/xvector.scp, the data
    dir in <root>/data (4 speakers x 3 tones) and its trials in <root>/data/trials."""
    import sys
    from upmp.data.kaldi_dir import DataDir
    from upmp.data.trials import make_balanced_trials, write_kaldi_trials
    root = tmp_path_factory.mktemp("tiny_exp")
    utts = {f"spk{s}-utt{u}": (f"spk{s}", 0.8 + 0.3 * u + 0.1 * s, 150 + 90 * s + 9 * u)
            for s in range(4) for u in range(3)}
    data = write_data_dir(root / "data", utts)
    write_kaldi_trials(str(data / "trials"), make_balanced_trials(DataDir.load(data).utt2spk, seed=0))
    cfg = dict(TRAIN_CONFIG, train_conf=dict(TRAIN_CONFIG["train_conf"], steps=30, crop_seconds=0.5, valid_every=15,
                                               log_every=10, ckpt_every=30))
    cfg["backend_conf"] = dict(cfg["backend_conf"], embed_dim=16)
    (root / "conf.yaml").write_text(yaml.safe_dump(cfg))
    exp = root / "exp" / "upmp"
    py = [sys.executable, "-m"]
    for args in (["upmp.bin.train", "--config", root / "conf.yaml", "--train_data_dir", data, "--upstream", "ge2e",
                  "--valid_data_dir", data, "--valid_trials", data / "trials", "--exp_dir", exp],
                 ["upmp.bin.extract_embeddings", "--model", exp / "model.pt", "--data_dir", data,
                  "--upstream", "ge2e", "--out_dir", exp / "embeddings" / "data", "--num_threads", "1"]):
        r = subprocess.run(py + [str(a) for a in args], capture_output=True, text=True, env=bash_env())
        assert r.returncode == 0, r.stderr[-3000:]
    return root


@pytest.fixture
def ddp_dump(dump):
    cfg = dict(TRAIN_CONFIG, backend_conf=dict(TRAIN_CONFIG["backend_conf"], dropout=0.0),
               train_conf=dict(TRAIN_CONFIG["train_conf"], steps=30, batch_size=8, log_every=5, ckpt_every=10))
    (dump / "conf.yaml").write_text(yaml.safe_dump(cfg))
    return dump


# The longest files first, so that the parallel run (test/run.sh: whole files spread over the
# workers, in this order) does not end on one of them alone; the rest keep their order. xdist gives a
# worker its next file as soon as 2 or fewer of its tests are pending, so the worker of the
# one-test full recipe gets the third file at once, queued behind the recipe: test_metrics.py
# (10 quick tests), so that test_slurm.py and the other long files go to the free worker.
LONGEST_FIRST = ("recipes/test_mini_full.py", "recipes/test_mini.py", "upmp/test_metrics.py", "recipes/test_slurm.py",
                 "faults/test_security.py", "recipes/test_vctk.py", "recipes/test_import.py",
                 "upmp/train/test_trainer.py", "upmp/train/test_distributed.py", "faults/test_data_loss.py",
                 "faults/test_tracebacks.py", "recipes/test_multinode.py")


def pytest_collection_modifyitems(session, config, items):
    here = Path(__file__).resolve().parent
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def order(item):
        try:
            return rank.get(Path(item.path).resolve().relative_to(here).as_posix(), len(rank))
        except ValueError:
            return len(rank)
    items.sort(key=order)

