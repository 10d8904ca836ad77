"""Helpers of the test suite: tone signals, small data dirs, fake corpus layouts, the tiny training
config, the environment recipes run in. Tests import them as `from helpers import ...` (test/conftest.py
puts test/ on sys.path); fixtures are in test/conftest.py."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

import forkserver  # noqa: E402  (test/forkserver.py: python -m calls forked from a warm interpreter)

ROOT = Path(__file__).resolve().parent.parent  # the repository


TEMPLATE = ROOT / "egs" / "TEMPLATE" / "sv1"


VOX2_VIDEOS = ["0-1LxEjzb_Q", "ZzY9Xmz41gA"]  # 11 characters; YouTube ids may contain '-'


def tone(seconds: float, freq: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A sine plus a little noise, float32 in [-1, 1]."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    return (0.4 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def sox_flac(path: Path, seconds: float, freq: float, rate: int, seed: int = 0) -> Path:
    """A tone() encoded as 16-bit flac at `rate` by sox (as corpora ship), parent dirs created."""
    import subprocess
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = path.with_suffix(".tmp.wav")
    soundfile.write(wav, tone(seconds, freq, rate, seed), rate, subtype="PCM_16")
    subprocess.run(["sox", str(wav), "-b", "16", str(path)], check=True)
    wav.unlink()
    return path


def write_data_dir(directory: Path, utts: dict, rate: int = 16000) -> Path:
    """utts: {utt_id: (spk, seconds, freq)} -> Kaldi data dir with wav files under directory/wav."""
    directory.mkdir(parents=True, exist_ok=True)
    wav_dir = directory / "wav"
    wav_dir.mkdir(exist_ok=True)
    wav_scp, utt2spk = {}, {}
    for i, (utt, (spk, seconds, freq)) in enumerate(sorted(utts.items())):
        path = wav_dir / f"{utt}.wav"
        soundfile.write(path, tone(seconds, freq, rate, seed=i), rate, subtype="PCM_16")
        wav_scp[utt], utt2spk[utt] = str(path), spk
    from upmp.data.kaldi_dir import DataDir
    DataDir(wav_scp, utt2spk).write(directory)
    return directory


TRAIN_CONFIG = {  # a tiny training config: what differs from the defaults (upmp/train/schema.py)
    "use_hidden0": True,
    "backend_conf": {"conv_dim": 4, "heads": 2, "embed_dim": 8},
    "optim_conf": {"upstream_lr": 1.0e-4},
    "train_conf": {"steps": 12, "batch_size": 4, "crop_seconds": 0.4, "log_every": 4, "ckpt_every": 6,
                   "valid_every": 0, "preload": True, "num_workers": 0, "num_threads": 1, "device": "cpu"},
}


def vox1_split_layout(corpus, root):
    """The corpus as the official archives unpack side by side: vox1_{dev,test}_wav/wav/<id>/..."""
    test_spk = {l.split("\t")[0] for l in (corpus / "vox1_meta.csv").read_text().splitlines() if l.endswith("\ttest")}
    for spk_dir in sorted((corpus / "wav").iterdir()):
        part = "vox1_test_wav" if spk_dir.name in test_spk else "vox1_dev_wav"
        shutil.copytree(spk_dir, root / part / "wav" / spk_dir.name)
    for name in ("vox1_meta.csv", "veri_test2.txt"):
        shutil.copy(corpus / name, root / name)
    return root


def vox1_extended_lists(corpus, root):
    """Vox1-E / Vox1-H-like lists over every speaker (dev included), in the official format."""
    wavs = sorted(str(p.relative_to(corpus / "wav")) for p in corpus.glob("wav/*/*/*.wav"))
    pairs = [(a, b) for i, a in enumerate(wavs) for b in wavs[i + 1:]]
    lines = [f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}" for a, b in pairs]
    (root / "list_test_all2.txt").write_text("\n".join(lines[::3]) + "\n")
    (root / "list_test_hard2.txt").write_text("\n".join(lines[1::7]) + "\n")
    return lines[::3], lines[1::7]


def dev_speakers(n):
    """n VoxCeleb2 dev speaker ids (official idNNNNN form; the suite does not need ../shared)."""
    return ["id00012", "id00015", "id00016", "id00017", "id00018", "id00019", "id00020"][:n]


def bash_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["LC_ALL"] = "C"
    return env


def make_recipe(tmp_path: Path, corpus: str = "mini") -> Path:
    """A copy of egs/<corpus>/sv1 (run.sh, local/, conf/) linked to the real TEMPLATE, as recipes are."""
    d = tmp_path / "egs" / corpus / "sv1"
    d.mkdir(parents=True)
    src = ROOT / "egs" / corpus / "sv1"
    for name in ("sv.sh", "path.sh", "cmd.sh", "db.sh", "utils"):
        assert os.readlink(src / name) == f"../../TEMPLATE/sv1/{name}"  # the recipe shares the TEMPLATE's
        (d / name).symlink_to(TEMPLATE / name)
    shutil.copy(src / "run.sh", d / "run.sh")
    shutil.copytree(src / "local", d / "local")
    shutil.copytree(src / "conf", d / "conf")  # follows the voxceleb2 -> voxceleb1 conf links
    return d


def run(recipe: Path, *args, env=None, fresh: bool = False):
    """./run.sh <args> in a recipe dir, output captured; its `python3 -m upmp.bin.*` calls are forked
    from a warm interpreter (forkserver.recipe_env) unless fresh."""
    e = dict(os.environ)
    e.update(env or {})
    if not fresh:
        e = forkserver.recipe_env(e)
    return subprocess.run(["./run.sh", *args], cwd=recipe, capture_output=True, text=True, env=e)


def train(dump, exp, *overrides):
    return forkserver.run("upmp.bin.train", "--config", dump / "conf.yaml", "--train_scp", dump / "dump" / "layers.scp",
                          "--utt2spk", dump / "utt2spk", "--exp_dir", exp, *overrides)



def train_env():
    return dict(bash_env(), OMP_NUM_THREADS="1")


def run_train(dump, exp, nproc=1, *overrides):
    args = ["upmp.bin.train", "--config", dump / "conf.yaml", "--train_scp", dump / "dump/layers.scp",
            "--utt2spk", dump / "utt2spk", "--exp_dir", exp, *overrides]
    if nproc > 1:
        return forkserver.run("torch.distributed.run", "--standalone", "--nproc_per_node", nproc, "-m", *args,
                              env=train_env(), fresh=True)
    return forkserver.run(*args, env=train_env())


def assert_same_training(exp, reference, dump):
    """exp trained the reference's model: equal losses, same embeddings (the tolerance of 2 processes vs 1)."""
    np.testing.assert_allclose(losses(exp), losses(reference), rtol=1e-4, atol=1e-4)
    # biases whose true gradient is 0 (cancelled by a following batch norm or softmax) get
    # rounding-noise Adam steps; in eval mode the running means absorb them up to a small lag
    a, b = embeddings(exp, dump), embeddings(reference, dump)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.9999


def losses(exp):
    return np.loadtxt(exp / "train_metrics.tsv", skiprows=1)[:, 1]


def embeddings(exp, dump):
    from upmp.data.kaldi_dir import read_table
    from upmp.embeddings import embed_stacks
    from upmp.checkpoint import load_model
    from upmp.data.layer_stacks import load_stack
    model, meta = load_model(str(exp / "model.pt"))
    entries = read_table(dump / "dump/layers.scp")
    return embed_stacks(model, [load_stack(entries[u], meta.num_layers) for u in sorted(entries)])



# --- fault injection (test/faults/): one error line, nothing written before lost --------------------

def entry_point(module: str, *args) -> list:
    """The command line of `python -m <module> <args>` in this interpreter."""
    return [sys.executable, "-m", module, *map(str, args)]


def run_module(module: str, *args, env=None, cwd=ROOT, fresh: bool = False):
    """python -m <module> <args> from the repository (this checkout's upmp), output captured; in a
    process forked from a warm interpreter unless fresh=True (test/forkserver.py)."""
    return forkserver.run(module, *args, env=env or bash_env(), cwd=cwd, fresh=fresh)


def one_line_error(r, *parts, code: int = 1) -> str:
    """Exit `code`, and stderr's only non-log line is an error holding every part (no traceback)."""
    assert r.returncode == code, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ": error: " in ln]
    assert len(lines) == 1, r.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def snapshot(root: Path, dirs: bool = False) -> dict:
    """{relative path: bytes} of every file under root (of root itself when it is a file); with
    dirs=True every directory too (value None), so a directory created there shows."""
    root = Path(root)
    if root.is_file():
        return {"": root.read_bytes()}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*")) if dirs or p.is_file()}
