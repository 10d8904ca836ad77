"""Fault injection (issue 19, data loss): package_model --out never deletes what it did not write and
replaces an earlier package atomically; two writers of one output are refused, not interleaved;
upmp-embed resumes only what the same model made from the same inputs; a rejected ONNX export never
lands; an experiment's embeddings load from any directory. Each case asserts the exit status, one
error line, no traceback, and that what was written before is intact byte for byte."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch

from helpers import bash_env
from helpers import run_module as run, one_line_error, snapshot as tree_snapshot, entry_point as command

ROOT = Path(__file__).resolve().parents[2]


def snapshot(directory):
    return tree_snapshot(directory, dirs=True)  # new empty dirs count too


def stage3(tiny_experiment):
    return {k: np.asarray(v) for k, v in
            kaldiio.load_scp(str(tiny_experiment / "exp/upmp/embeddings/data/xvector.scp")).items()}


def wait_for_lock(lock_file, proc, seconds=120):
    """Until `proc` holds its lock (its pid is in the lock file)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()
        if lock_file.is_file() and lock_file.read_text().strip() == str(proc.pid):
            return
        time.sleep(0.05)
    raise AssertionError(f"{lock_file}: never locked by {proc.pid}")


@pytest.fixture(scope="module")
def package(tiny_experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "model"
    r = run("upmp.bin.package_model", "--exp_dir", tiny_experiment / "exp/upmp", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


# --- package_model --out ---------------------------------------------------------------------------

@pytest.mark.parametrize("where, said", [
    ("exp/upmp", "is the experiment"),
    ("exp", "is a directory holding the experiment"),
    (".", "is the recipe dir of the experiment"),
    ("exp/upmp/embeddings", "is inside the experiment"),
    ("exp/upmp/package", "is inside the experiment"),
])
def test_package_out_never_the_experiment_or_around_it(tiny_experiment, tmp_path, where, said):
    """The issue's case: --out exp/<name> deleted all 59 files of the experiment, rc 0."""
    before = snapshot(tiny_experiment)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    r = run("upmp.bin.package_model", "--exp_dir", tiny_experiment / "exp/upmp", "--out", tiny_experiment / where,
            cwd=elsewhere)
    one_line_error(r, f"--out {tiny_experiment / where} {said}", "give a new directory")
    assert snapshot(tiny_experiment) == before


def test_package_out_never_the_current_dir_nor_the_root(tiny_experiment, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine\n")
    r = run("upmp.bin.package_model", "--exp_dir", tiny_experiment / "exp/upmp", "--out", ".", cwd=work)
    one_line_error(r, "--out . is the current directory; give a new directory")
    r = run("upmp.bin.package_model", "--exp_dir", tiny_experiment / "exp/upmp", "--out", "/", cwd=work)
    one_line_error(r, "--out / is the file system root; give a new directory")
    assert snapshot(work) == {"notes.txt": b"mine\n"}


@pytest.mark.parametrize("content", [
    {"notes.txt": "mine\n"},                                                     # a user's folder
    {"package.json": json.dumps({"format": "something-else"}), "a.bin": "x"},   # another tool's manifest
    {"sub/deep.txt": "mine\n"},
])
def test_package_out_refuses_a_folder_that_is_not_a_package(tiny_experiment, tmp_path, content):
    out = tmp_path / "folder"
    for name, text in content.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = snapshot(out)
    r = run("upmp.bin.package_model", "--exp_dir", tiny_experiment / "exp/upmp", "--out", out)
    one_line_error(r, f"--out {out} is a non-empty directory that is not a upmp model package (no package.json)",
                   "or remove it first")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]  # no temporary dir, no lock file left


def test_package_out_refuses_a_package_holding_a_users_file(tiny_experiment, package, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(package, out)
    (out / "my_notes.txt").write_text("eval on set B: 3.1 %\n")
    before = snapshot(out)
    r = run("upmp.bin.package_model", "--exp_dir", tiny_experiment / "exp/upmp", "--out", out)
    one_line_error(r, f"--out {out} holds my_notes.txt, which is not part of its package", "move it out first")
    assert snapshot(out) == before


def test_package_replaces_an_earlier_package(tiny_experiment, package, tmp_path):
    import upmp
    out = tmp_path / "model"
    shutil.copytree(package, out)
    (tmp_path / ".model.tmp.stale1").mkdir()  # the temporary dirs of a killed run: removed
    (tmp_path / ".model.old.stale2").mkdir()
    r = run("upmp.bin.package_model", "--exp_dir", tiny_experiment / "exp/upmp", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert json.loads((out / "package.json").read_text())["created"] >= \
        json.loads((package / "package.json").read_text())["created"]
    upmp.load_model(str(out))


def test_failed_package_write_keeps_the_earlier_package(package, tmp_path):
    """The new package is built beside --out and swapped in whole: a failure half way (here its
    upstream checkpoint vanished) leaves the earlier package as it was and no temporary dir."""
    from upmp.inference.package import read_package, write_package
    out = tmp_path / "model"
    shutil.copytree(package, out)
    before = snapshot(out)
    content = read_package(str(out))
    content["info"] = dict(content["info"], upstream=dict(content["info"]["upstream"], ckpt="upstream/x.ckpt"))
    content["upstream_source"] = tmp_path / "gone.ckpt"
    with pytest.raises(FileNotFoundError):
        write_package(content, str(out))
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_replace_dir_swaps_a_complete_directory_in(tmp_path, monkeypatch, exchange):
    from upmp import fileio
    if exchange and sys.platform == "linux":  # renameat2(RENAME_EXCHANGE) is what Linux uses
        a, b = tmp_path / "a", tmp_path / "b"
        a.mkdir(), b.mkdir()
        (a / "x").write_text("a")
        assert fileio._exchange(a, b) and (b / "x").read_text() == "a" and not (a / "x").exists()
        shutil.rmtree(a), shutil.rmtree(b)
    if not exchange:
        monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    new, dest = tmp_path / "new", tmp_path / "dest"
    (new / "sub").mkdir(parents=True)
    (new / "sub/f").write_text("new")
    dest.mkdir()
    (dest / "old").write_text("old")
    fileio.replace_dir(new, dest)
    assert snapshot(tmp_path) == {"dest": None, "dest/sub": None, "dest/sub/f": b"new"}


# --- two writers of one output ----------------------------------------------------------------------

def test_two_package_model_runs_to_one_out(tiny_experiment, tmp_path):
    """The first holds --out while it reads its validation trials from a FIFO (as long as the test
    wants); the second is refused, naming the first's pid; then the first completes a package that
    loads."""
    import upmp
    out = tmp_path / "model"
    fifo = tmp_path / "data/trials"  # named as the experiment's validation set (data), so it is found
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    exp = tiny_experiment / "exp/upmp"
    first = subprocess.Popen(command("upmp.bin.package_model", "--exp_dir", exp, "--out", out, "--valid_trials", fifo),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=bash_env(), cwd=ROOT)
    try:
        wait_for_lock(tmp_path / ".model.lock", first)
        second = run("upmp.bin.package_model", "--exp_dir", exp, "--out", out)
        one_line_error(second, f"{out} is being written by another process (pid {first.pid}); "
                               "wait for it or choose another --out")
        fifo.write_text((tiny_experiment / "data/trials").read_text())
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-3000:]
    assert "wrote" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "model"]  # lock released and removed
    model = upmp.load_model(str(out))
    assert model.threshold is not None


def test_two_embed_runs_into_one_out(tiny_experiment, tmp_path):
    """The first's last utterance is a pipe that waits until the test lets it go: the second run is
    refused meanwhile, and the first's embeddings are all there and right."""
    wav = tiny_experiment / "data/wav"
    go = tmp_path / "go"
    utts = ["spk0-utt0", "spk1-utt1", "spk2-utt2"]
    scp = tmp_path / "wav.scp"
    scp.write_text(f"{utts[0]} {wav}/{utts[0]}.wav\n{utts[1]} {wav}/{utts[1]}.wav\n"
                   f"{utts[2]} for i in $(seq 600); do [ -e {go} ] && break; sleep 0.1; done; cat {wav}/{utts[2]}.wav |\n")
    out = tmp_path / "emb"
    exp = tiny_experiment / "exp/upmp"
    first = subprocess.Popen(command("upmp.bin.embed", "--model", exp, scp, "--out", out, "--chunk", "1",
                                     "--num_threads", "1"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=bash_env(), cwd=ROOT)
    try:
        wait_for_lock(out / ".embed.lock", first)
        other = tmp_path / "other.scp"
        other.write_text(f"spk3-utt0 {wav}/spk3-utt0.wav\n")
        second = run("upmp.bin.embed", "--model", exp, other, "--out", out, "--num_threads", "1")
        one_line_error(second, f"{out} is being written by another process (pid {first.pid}); "
                               "wait for it or choose another --out")
        go.touch()
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-3000:]
    got = {k: np.asarray(v) for k, v in kaldiio.load_scp(str(out / "xvector.scp")).items()}
    want = stage3(tiny_experiment)
    assert sorted(got) == utts
    for u in utts:
        np.testing.assert_allclose(got[u], want[u], atol=1e-5)
    assert sorted(p.name for p in out.iterdir()) == ["embed_info.json", "xvector.ark", "xvector.scp"]


def test_a_killed_writer_leaves_no_stale_lock(tiny_experiment, tmp_path):
    """kill -9 while holding --out (its lock file stays behind): the next run takes over and
    completes, keeping the chunk the killed run had finished."""
    import signal
    wav = tiny_experiment / "data/wav"
    scp, out = tmp_path / "wav.scp", tmp_path / "emb"
    scp.write_text(f"spk0-utt0 {wav}/spk0-utt0.wav\n"
                   f"spk1-utt1 for i in $(seq 600); do sleep 0.1; done; cat {wav}/spk1-utt1.wav |\n")
    args = ("--model", tiny_experiment / "exp/upmp", scp, "--out", out, "--chunk", "1", "--num_threads", "1")
    first = subprocess.Popen(command("upmp.bin.embed", *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=bash_env(), cwd=ROOT, start_new_session=True)
    try:
        wait_for_lock(out / ".embed.lock", first)
        end = time.monotonic() + 120
        while not list(out.glob("parts/*.scp")) and time.monotonic() < end:  # the first chunk is written
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the embed process and the pipe's shell
        first.wait()
        end = time.monotonic() + 30  # and every other process of the group gone (a forked one holds the lock too)
        while time.monotonic() < end:
            try:
                os.killpg(first.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
    assert (out / ".embed.lock").is_file()
    scp.write_text(f"spk0-utt0 {wav}/spk0-utt0.wav\nspk1-utt1 {wav}/spk1-utt1.wav\n")
    r = run("upmp.bin.embed", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 utterances, 1 already in" in r.stderr  # the chunk the killed run finished is kept
    got = {k: np.asarray(v) for k, v in kaldiio.load_scp(str(out / "xvector.scp")).items()}
    want = stage3(tiny_experiment)
    assert sorted(got) == ["spk0-utt0", "spk1-utt1"]
    for u in got:
        np.testing.assert_allclose(got[u], want[u], atol=1e-5)
    assert not (out / ".embed.lock").exists()


# --- upmp-embed resume ------------------------------------------------------------------------------

def test_embed_resume_embeds_an_utterance_again_when_its_input_changed(tiny_experiment, tmp_path, caplog):
    import logging
    from upmp.bin.common import run_main
    from upmp.bin.embed import main
    wav = tiny_experiment / "data/wav"
    want = stage3(tiny_experiment)
    exp = str(tiny_experiment / "exp/upmp")
    scp, out = tmp_path / "wav.scp", tmp_path / "emb"
    audio = tmp_path / "u.wav"
    shutil.copy(wav / "spk0-utt0.wav", audio)
    scp.write_text(f"u {audio}\nv {wav}/spk1-utt0.wav\n")

    def embed():
        caplog.clear()
        run_main(main, ["--model", exp, str(scp), "--out", str(out), "--num_threads", "1"])
        return {k: np.asarray(v) for k, v in kaldiio.load_scp(str(out / "xvector.scp")).items()}

    caplog.set_level(logging.INFO, logger="embed")
    got = embed()
    np.testing.assert_allclose(got["u"], want["spk0-utt0"], atol=1e-5)
    got = embed()  # nothing changed: nothing embedded
    assert "2 utterances, 2 already in" in caplog.messages[0] and "0 to embed" in caplog.messages[0]

    scp.write_text(f"u {wav}/spk2-utt1.wav\nv {wav}/spk1-utt0.wav\n")  # same id, another file
    got = embed()
    assert "1 to embed" in caplog.messages[0]
    assert any(f"1 utterances in {out} were embedded from another input" in m for m in caplog.messages)
    np.testing.assert_allclose(got["u"], want["spk2-utt1"], atol=1e-5)
    np.testing.assert_allclose(got["v"], want["spk1-utt0"], atol=1e-5)

    scp.write_text(f"u {audio}\nv {wav}/spk1-utt0.wav\n")
    embed()
    shutil.copy(wav / "spk3-utt2.wav", audio)  # same id, same path, the file replaced
    got = embed()
    assert "1 to embed" in caplog.messages[0]
    np.testing.assert_allclose(got["u"], want["spk3-utt2"], atol=1e-5)
    np.testing.assert_allclose(got["v"], want["spk1-utt0"], atol=1e-5)


def perturbed_experiment(tiny_experiment, tmp_path):
    """A copy of the experiment whose backend differs: another model."""
    exp = tmp_path / "exp2"
    exp.mkdir()
    for name in ("model.pt", "config.yaml", "train_summary.json"):
        shutil.copy(tiny_experiment / "exp/upmp" / name, exp / name)
    ckpt = torch.load(exp / "model.pt", weights_only=True)
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.numel() > 1)
    ckpt["model"][key] = ckpt["model"][key] + 0.5
    torch.save(ckpt, exp / "model.pt")
    return exp


@pytest.mark.parametrize("fmt", ["kaldi", "npy"])
def test_embed_refuses_another_models_output(tiny_experiment, tmp_path, fmt):
    wav = tiny_experiment / "data/wav"
    scp, out = tmp_path / "wav.scp", tmp_path / "emb"
    scp.write_text(f"u {wav}/spk0-utt0.wav\n")
    exp = tiny_experiment / "exp/upmp"
    r = run("upmp.bin.embed", "--model", exp, scp, "--out", out, "--format", fmt, "--num_threads", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    before = snapshot(out)
    scp.write_text(f"u {wav}/spk0-utt0.wav\nw {wav}/spk2-utt0.wav\n")
    other = perturbed_experiment(tiny_experiment, tmp_path)
    r = run("upmp.bin.embed", "--model", other, scp, "--out", out, "--format", fmt, "--num_threads", "1")
    one_line_error(r, f"{out} holds embeddings of another model ({exp}, sha256 ", f"--model {other} is ",
                   "use another --out or remove it")
    assert snapshot(out) == before


def test_embed_refuses_embeddings_it_cannot_attribute(tiny_experiment, tmp_path):
    """An --out with embeddings but no embed_info.json (stage 3's dir, a user's npy files)."""
    out = tmp_path / "emb"
    shutil.copytree(tiny_experiment / "exp/upmp/embeddings/data", out)
    before = snapshot(out)
    r = run("upmp.bin.embed", "--model", tiny_experiment / "exp/upmp", tiny_experiment / "data/wav/spk0-utt0.wav",
            "--out", out, "--num_threads", "1")
    one_line_error(r, f"{out} holds embeddings without embed_info.json", "use another --out or remove it")
    assert snapshot(out) == before


# --- export_onnx -------------------------------------------------------------------------------------

def test_rejected_onnx_export_keeps_the_earlier_one(tiny_experiment, tmp_path):
    out = tmp_path / "model.onnx"
    exp = tiny_experiment / "exp/upmp"
    r = run("upmp.bin.export_onnx", "--model", exp, "--out", out, "--graphs", "backend", "--num_threads", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    before = snapshot(tmp_path)
    assert set(before) == {"model.onnx", "model.onnx.json"}
    r = run("upmp.bin.export_onnx", "--model", exp, "--out", out, "--graphs", "backend", "--tolerance", "0",
            "--num_threads", "1")
    one_line_error(r, f"{out}: onnxruntime differs from torch by", "(> --tolerance 0); not written",
                   "an earlier file there is kept")
    assert snapshot(tmp_path) == before  # no temporary file either


# --- an experiment used from another directory ------------------------------------------------------

def recipe_layout(tiny_experiment, tmp_path):
    """The tiny experiment as a recipe leaves it: <repo>/egs/mini/sv1/{exp/upmp,data}, with the scp's
    ark paths and the recorded validation trials relative to the recipe dir."""
    recipe = tmp_path / "repo/egs/mini/sv1"
    exp = recipe / "exp/upmp"
    exp.mkdir(parents=True)
    src = tiny_experiment / "exp/upmp"
    for name in ("model.pt", "config.yaml"):
        shutil.copy(src / name, exp / name)
    summary = json.loads((src / "train_summary.json").read_text())
    summary["inputs"].update(valid_trials="data/dev/trials", train_data_dir="data/train")
    (exp / "train_summary.json").write_text(json.dumps(summary))
    (recipe / "data/dev").mkdir(parents=True)
    shutil.copy(tiny_experiment / "data/trials", recipe / "data/dev/trials")
    ark = src / "embeddings/data/xvector.ark"
    for name in ("train", "dev"):
        d = exp / "embeddings" / name
        d.mkdir(parents=True)
        shutil.copy(ark, d / "xvector.ark")
        text = (src / "embeddings/data/xvector.scp").read_text()
        assert str(ark) in text
        (d / "xvector.scp").write_text(text.replace(str(ark), f"exp/upmp/embeddings/{name}/xvector.ark"))
    return tmp_path / "repo", exp


def test_experiment_scp_paths_are_resolved_from_the_recipe_dir(tiny_experiment, package, tmp_path):
    """package_model, upmp-verify --model and upmp.load_model on egs/mini/sv1/exp/<name>, run from the
    repository root: the ark paths in its scp files are relative to the recipe dir."""
    repo, exp = recipe_layout(tiny_experiment, tmp_path)
    rel = exp.relative_to(repo)
    out = tmp_path / "model"
    r = run("upmp.bin.package_model", "--exp_dir", rel, "--out", out, cwd=repo)
    assert r.returncode == 0, r.stderr[-3000:]
    got, want = (json.loads((p / "package.json").read_text()) for p in (out, package))
    np.testing.assert_allclose(got["mean"], want["mean"], atol=1e-6)
    assert got["calibration"]["num_trials"] == want["calibration"]["num_trials"]
    np.testing.assert_allclose(got["threshold"]["score"], want["threshold"]["score"], atol=1e-6)

    wav = tiny_experiment / "data/wav"
    r = run("upmp.bin.verify", "--model", rel, wav / "spk0-utt0.wav", wav / "spk0-utt1.wav", cwd=repo)
    assert r.returncode == 0, r.stderr[-3000:]

    code = ("import upmp, sys; m = upmp.load_model(sys.argv[1]); print(len(m.info['mean']))")
    r = subprocess.run([sys.executable, "-c", code, str(rel)], capture_output=True, text=True, env=bash_env(),
                       cwd=repo)
    assert r.returncode == 0 and r.stdout.strip() == str(len(want["mean"])), r.stderr[-3000:]


def test_experiment_scp_whose_ark_is_nowhere(tiny_experiment, tmp_path):
    repo, exp = recipe_layout(tiny_experiment, tmp_path)
    before = snapshot(exp)
    (exp / "embeddings/train/xvector.ark").rename(exp / "embeddings/train/moved.ark")
    r = run("upmp.bin.package_model", "--exp_dir", exp.relative_to(repo), "--out", tmp_path / "model", cwd=repo)
    one_line_error(r, "exp/upmp/embeddings/train/xvector.scp:1: exp/upmp/embeddings/train/xvector.ark (of ",
                   f"is not found from {repo} nor from the recipe dir {exp.parent.parent}",
                   "run from the recipe dir that extracted it")
    (exp / "embeddings/train/moved.ark").rename(exp / "embeddings/train/xvector.ark")
    assert snapshot(exp) == before
    assert not (tmp_path / "model").exists()
