"""Tracebacks instead of one line (issue 19): an output path that cannot be used (read-only, a file
where a directory is expected or the reverse, disk full), a truncated embedding ark, --device cuda
without a GPU, bad counts, an empty trial list, a truncated results.json, a binary trial list. Each:
the exit status, exactly one error line naming the path and what to do, no traceback, and nothing
written earlier lost."""
import contextlib
import errno
import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import run_module as run, one_line_error, snapshot

ROOT = Path(__file__).resolve().parents[2]


# --- places that cannot take an output ------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A tmpfs mounted at path (root only); yields False where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        yield False
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def readonly(tmp_path):
    """A directory nothing can be written into: a read-only tmpfs (root), else mode 0555."""
    d = tmp_path / "readonly"
    with tmpfs(d, "ro,size=1m") as mounted:
        if not mounted:
            if os.geteuid() == 0:
                pytest.skip("root without mount: no read-only place to write to")
            d.chmod(0o555)
        yield d
        if not mounted:
            d.chmod(0o755)


@pytest.fixture
def full_disk(tmp_path):
    """(directory on a small tmpfs, fill()): fill() uses up all its space (root with mount only)."""
    d = tmp_path / "full"
    with tmpfs(d, "size=2m") as mounted:
        if not mounted:
            pytest.skip("needs root and mount for a small tmpfs (the in-process disk-full tests run anyway)")

        def fill():
            with open(d / "filler", "wb", buffering=0) as f, pytest.raises(OSError) as e:
                while True:
                    f.write(b"\0" * 4096)
            assert e.value.errno == errno.ENOSPC
        yield d, fill


@pytest.fixture
def a_file(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("mine\n")
    return f


@pytest.fixture(scope="module")
def package(tiny_experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "pkg"
    r = run("upmp.bin.package_model", "--exp_dir", tiny_experiment / "exp" / "upmp", "--out", out)
    assert r.returncode == 0, r.stderr
    return out


# --- run_main: which OSErrors become one line -----------------------------------------------------

def test_run_main_maps_unusable_paths_only(tmp_path, capsys):
    from upmp.bin.common import run_main
    a_file = tmp_path / "f"
    a_file.write_text("x")
    cases = [
        (OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ro" / "x")),
         f"{tmp_path}/ro/x: read-only file system; give a path on a writable one"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/x"),
         "/root/x: permission denied (Permission denied); give a path this user may use"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", str(a_file / "y")),
         f"{a_file}: is a file where a directory is expected (writing {a_file}/y)"),
        (FileExistsError(errno.EEXIST, "File exists", str(a_file)), f"{a_file}: is a file where a directory"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", str(tmp_path)), f"{tmp_path}: is a directory where a file"),
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device"),
        (OSError(errno.EDQUOT, "Disk quota exceeded", "/q/x"),
         "/q/x: no space left on the device (Disk quota exceeded); free space there"),
        # an atomic write's temp file is named by the file it becomes; os.replace's second name wins
        (OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".scores.k2j_x9a1")), f"{tmp_path}/scores:"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "/t/.x.abcdefgh", None, "/t/out"), "/t/out: is a directory"),
    ]
    for error, part in cases:
        def main(argv, error=error):
            raise error
        with pytest.raises(SystemExit) as e:
            run_main(main, [])
        assert e.value.code == 1
        err = [ln for ln in capsys.readouterr().err.splitlines() if ": error: " in ln]
        assert len(err) == 1 and part in err[0], (err, part)
    # bugs keep their traceback: no file name, a missing file, an existing directory made again, others
    for error in (OSError(errno.EBADF, "Bad file descriptor"), FileNotFoundError(errno.ENOENT, "No such file", "x"),
                  FileExistsError(errno.EEXIST, "File exists", str(tmp_path)), OSError(errno.EINVAL, "Invalid", "x"),
                  PermissionError(errno.EACCES, "Permission denied")):
        def main(argv, error=error):
            raise error
        with pytest.raises(type(error)):
            run_main(main, [])


# --- package_model --out ----------------------------------------------------------------------------

def test_package_model_out_that_cannot_be_written(tiny_experiment, tmp_path, readonly, a_file):
    exp = tiny_experiment / "exp" / "upmp"
    before = snapshot(a_file)
    r = run("upmp.bin.package_model", "--exp_dir", exp, "--out", a_file)
    one_line_error(r, f"{a_file}: is a file where a directory is expected", "give a directory path")
    r = run("upmp.bin.package_model", "--exp_dir", exp, "--out", a_file / "pkg")
    one_line_error(r, f"{a_file}: is a file where a directory is expected (writing {a_file}/pkg)")
    assert snapshot(a_file) == before and not list(tmp_path.glob(".a_file*"))  # the user's file stays
    r = run("upmp.bin.package_model", "--exp_dir", exp, "--out", readonly / "pkg")
    one_line_error(r, f"{readonly}/pkg: ", "(another --out / --exp_dir)")


def test_package_model_on_a_full_disk(tiny_experiment, package, full_disk):
    d, fill = full_disk
    shutil.copytree(package, d / "pkg")
    before = snapshot(d / "pkg")
    fill()
    r = run("upmp.bin.package_model", "--exp_dir", tiny_experiment / "exp" / "upmp", "--out", d / "pkg")
    one_line_error(r, f"{d}/pkg", "no space left on the device", "free space there")
    assert snapshot(d / "pkg") == before  # the earlier package is whole
    assert sorted(p.name for p in d.iterdir()) == ["filler", "pkg"]  # no half package left taking space


def test_package_model_disk_full_in_process(tiny_experiment, package, tmp_path, monkeypatch, capsys):
    """The same without a tmpfs: torch.save fails as write() does on a full disk (no file name)."""
    import torch
    from upmp.bin import package_model
    from upmp.bin.common import run_main
    out = tmp_path / "pkg"
    shutil.copytree(package, out)
    before = snapshot(out)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(package_model.main, ["--exp_dir", str(tiny_experiment / "exp" / "upmp"), "--out", str(out)])
    assert e.value.code == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ": error: " in ln]
    assert len(err) == 1 and f"{out}: no space left on the device" in err[0], err
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


# --- upmp-verify --trials --out ---------------------------------------------------------------------

def test_verify_trials_out_is_checked_before_embedding(tiny_experiment, package, tmp_path, readonly, a_file):
    data = tiny_experiment / "data"
    (tmp_path / "scores_dir").mkdir()
    for out, part in ((tmp_path / "scores_dir", f"{tmp_path}/scores_dir: is a directory where a file is expected"),
                      (a_file / "scores", f"{a_file}: is a file where a directory is expected"),
                      (readonly / "scores", f"{readonly}/scores: ")):
        r = run("upmp.bin.verify", "--model", package, "--trials", data / "trials", "--wav_scp", data, "--out", out)
        one_line_error(r, part)
        assert "embed:" not in r.stderr, r.stderr  # refused before a single utterance was embedded
    assert a_file.read_text() == "mine\n"


def test_verify_on_a_full_disk_keeps_the_earlier_scores(tiny_experiment, package, full_disk):
    d, fill = full_disk
    data = tiny_experiment / "data"
    (d / "scores").write_text("a b 0.5\n")
    fill()
    r = run("upmp.bin.verify", "--model", package, "--trials", data / "trials", "--wav_scp", data,
            "--out", d / "scores")
    one_line_error(r, f"{d}/scores: no space left on the device")
    assert (d / "scores").read_text() == "a b 0.5\n"


def test_verify_on_an_empty_trial_list(tiny_experiment, package, tmp_path):
    (tmp_path / "trials").write_text("")
    (tmp_path / "scores").write_text("a b 0.5\n")
    r = run("upmp.bin.verify", "--model", package, "--trials", tmp_path / "trials", "--wav_scp",
            tiny_experiment / "data", "--out", tmp_path / "scores")
    one_line_error(r, f"{tmp_path}/trials: no trials (the file is empty)")
    assert (tmp_path / "scores").read_text() == "a b 0.5\n"


# --- upmp-embed ---------------------------------------------------------------------------------------

def test_embed_out_that_cannot_be_written_and_bad_counts(tiny_experiment, package, readonly, a_file, tmp_path):
    data = tiny_experiment / "data"
    r = run("upmp.bin.embed", "--model", package, data, "--out", a_file)
    one_line_error(r, f"{a_file}: is a file where a directory is expected")
    assert a_file.read_text() == "mine\n"
    r = run("upmp.bin.embed", "--model", package, data, "--out", readonly / "emb")
    one_line_error(r, f"{readonly}/emb: ", "(another --out / --exp_dir)")
    for option, value in (("--chunk", 0), ("--chunk", -3), ("--max_batch_frames", 0)):
        r = run("upmp.bin.embed", "--model", package, data, "--out", tmp_path / "emb", option, value)
        one_line_error(r, f"argument {option}: must be at least 1, got {value}", code=2)
    assert not (tmp_path / "emb").exists()


def test_embed_on_a_full_disk_keeps_the_earlier_embeddings(tiny_experiment, package, full_disk):
    d, fill = full_disk
    data = tiny_experiment / "data"
    wavs = sorted((data / "wav").glob("*.wav"))
    r = run("upmp.bin.embed", "--model", package, wavs[0], "--out", d / "emb")
    assert r.returncode == 0, r.stderr
    before = snapshot(d / "emb")
    fill()
    r = run("upmp.bin.embed", "--model", package, data, "--out", d / "emb")
    # the first file the run writes names it: embed_info.json's record of the chunk, or the chunk's ark
    line = one_line_error(r, ": no space left on the device")
    assert re.search(rf"{re.escape(str(d))}/emb/(embed_info\S*|parts/part00000\.ark): no space", line), line
    assert snapshot(d / "emb") == before  # the earlier run's embeddings, and no half-written part


def test_a_truncated_xvector_ark(tiny_experiment, package, tmp_path):
    """score, package_model and an embed that resumes read a cut ark: one line naming the scp line,
    the utterance and the ark, not kaldiio's bare AssertionError."""
    import kaldiio
    import numpy as np
    emb = tmp_path / "emb"
    emb.mkdir()
    scp, ark = emb / "xvector.scp", emb / "xvector.ark"
    utts = [f"spk{s}-utt{u}" for s in range(4) for u in range(3)]
    with kaldiio.WriteHelper(f"ark,scp:{ark},{scp}") as w:
        for i, u in enumerate(utts):
            w(u, np.full(16, i, dtype=np.float32))
    data = ark.read_bytes()
    ark.write_bytes(data[:len(data) - 30])  # the last vector cut short (a full disk, a killed copy)
    before = snapshot(emb)
    last = scp.read_text().splitlines()[-1].split()[1]
    expected = f"{scp}:12: cannot read the embedding of 'spk3-utt2' at {last}"
    r = run("upmp.bin.score", "--embeddings", scp, "--trials", tiny_experiment / "data" / "trials",
            "--out", tmp_path / "scores")
    one_line_error(r, expected, "the ark is truncated or was overwritten", "extract the embeddings again")
    r = run("upmp.bin.package_model", "--exp_dir", tiny_experiment / "exp" / "upmp", "--out", tmp_path / "pkg",
            "--train_embeddings", scp)
    one_line_error(r, expected)
    r = run("upmp.bin.embed", "--model", package, tiny_experiment / "data", "--out", emb)
    one_line_error(r, expected)
    assert snapshot(emb) == before and not (tmp_path / "scores").exists() and not (tmp_path / "pkg").exists()


# --- --device -------------------------------------------------------------------------------------------

def test_device_cuda_without_a_gpu(tiny_experiment, package, tmp_path):
    import torch
    data = tiny_experiment / "data"
    device, part = (("cuda", "--device cuda: no CUDA device here; use --device cpu")
                    if not torch.cuda.is_available() else ("cuda:99", "--device cuda:99: this machine has"))
    wav = sorted((data / "wav").glob("*.wav"))[0]
    for module, args in (
            ("upmp.bin.embed", ["--model", package, data, "--out", tmp_path / "emb"]),
            ("upmp.bin.verify", ["--model", package, wav, wav]),
            ("upmp.bin.verify", ["--model", package, "--trials", data / "trials", "--wav_scp", data,
                                 "--out", tmp_path / "scores"]),
            ("upmp.bin.extract_embeddings", ["--model", tiny_experiment / "exp/upmp/model.pt", "--data_dir", data,
                                             "--upstream", "ge2e", "--out_dir", tmp_path / "x"]),
            ("upmp.bin.extract_layers", ["--data_dir", data, "--upstream", "ge2e", "--out_prefix", tmp_path / "l"])):
        r = run(module, *args, "--device", device)
        one_line_error(r, part)
    r = run("upmp.bin.embed", "--model", package, data, "--out", tmp_path / "emb", "--device", "gpu")
    one_line_error(r, "--device gpu: not a device name (cpu, cuda, cuda:N)")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- export_onnx, score, train on the same places --------------------------------------------------------

def test_export_score_train_outputs_that_cannot_be_written(tiny_experiment, package, tmp_path, readonly, a_file):
    pytest.importorskip("onnx")
    data = tiny_experiment / "data"
    scp = tiny_experiment / "exp/upmp/embeddings/data/xvector.scp"
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    (a_dir / "kept").write_text("kept\n")
    file_in_the_way = f"{a_file}: is a file where a directory is expected"
    dir_in_the_way = f"{a_dir}: is a directory where a file is expected"
    cases = [
        ("upmp.bin.export_onnx", ["--model", package, "--graphs", "backend", "--out"], "m.onnx"),
        ("upmp.bin.score", ["--embeddings", scp, "--trials", data / "trials", "--out"], "scores"),
    ]
    for module, args, name in cases:
        one_line_error(run(module, *args, a_file / name), file_in_the_way, "move the file away")
        one_line_error(run(module, *args, a_dir), dir_in_the_way, "give a file path")
        one_line_error(run(module, *args, readonly / name), f"{readonly}/{name}: ", "(another --out / --exp_dir)")
    train = ["upmp.bin.train", "--config", tiny_experiment / "conf.yaml", "--train_data_dir", data, "--upstream",
             "ge2e", "--exp_dir"]
    one_line_error(run(*train, a_file), file_in_the_way)
    one_line_error(run(*train, a_file / "exp"), f"{file_in_the_way} (writing {a_file}/exp)")
    one_line_error(run(*train, readonly / "exp"), f"{readonly}/exp: ", "--exp_dir")
    assert a_file.read_text() == "mine\n" and snapshot(a_dir) == {"kept": b"kept\n"}


def test_train_on_a_full_disk(tiny_experiment, full_disk):
    d, fill = full_disk
    (d / "exp").mkdir()
    (d / "exp" / "notes.txt").write_text("mine\n")
    fill()
    r = run("upmp.bin.train", "--config", tiny_experiment / "conf.yaml", "--train_data_dir", tiny_experiment / "data",
            "--upstream", "ge2e", "--exp_dir", d / "exp")
    one_line_error(r, f"{d}/exp/", "no space left on the device")
    assert "Logging error" not in r.stderr
    assert (d / "exp" / "notes.txt").read_text() == "mine\n"


# --- results, trial lists, model_info ----------------------------------------------------------------------

def test_a_truncated_results_json(tmp_path):
    exp = tmp_path / "exp" / "a"
    exp.mkdir(parents=True)
    full = '{"experiment": "a", "results": {"test/cosine": {"eer": 1.0, "mindcf_0.01": 0.1, "mindcf_0.05": 0.05}}}'
    (exp / "results.json").write_text(full[:40])
    (tmp_path / "cmp.md").write_text("earlier\n")
    r = run("upmp.bin.results", exp, "--out", tmp_path / "cmp")
    one_line_error(r, f"{exp}/results.json: not complete JSON (", "rerun stage 5 (write_results)")
    r = run("upmp.bin.compare_results", "--exp_dirs", exp, "--out", tmp_path / "cmp.md")
    one_line_error(r, f"{exp}/results.json: not complete JSON (")
    (exp / "results.json").write_text(full.replace('"eer": 1.0, ', ""))
    r = run("upmp.bin.results", exp, "--out", tmp_path / "cmp")
    one_line_error(r, f"{exp}/results.json: result 'test/cosine' has no number for eer")
    assert (tmp_path / "cmp.md").read_text() == "earlier\n"
    (exp / "results.json").write_text(full)
    r = run("upmp.bin.results", exp, "--out", tmp_path / "cmp")
    assert r.returncode == 0, r.stderr


def test_convert_trials_on_a_binary_file(tmp_path):
    binary = tmp_path / "list.txt"
    binary.write_bytes(gzip.compress(b"1 id10001/a/00001.wav id10001/b/00001.wav\n" * 50))  # a list.gz given as is
    (tmp_path / "trials").write_text("a b target\n")
    for fmt in ("auto", "kaldi", "voxceleb", "espnet", "paper_csv"):
        r = run("upmp.bin.convert_trials", "--format", fmt, "--input", binary, "--output", tmp_path / "trials")
        one_line_error(r, f"{binary}:1: not UTF-8 text (a binary file?)")
    assert (tmp_path / "trials").read_text() == "a b target\n"


def test_model_info_sizes_must_be_positive(tiny_experiment):
    for option in ("--input_dim", "--num_layers", "--frames"):
        args = {"--input_dim": 8, "--num_layers": 3, "--frames": 10, option: 0}
        flat = [x for kv in args.items() for x in kv]
        r = run("upmp.bin.model_info", "--config", tiny_experiment / "conf.yaml", *flat)
        one_line_error(r, f"argument {option}: must be at least 1, got 0", code=2)
    r = run("upmp.bin.model_info", "--config", tiny_experiment / "conf.yaml", "--input_dim", 8, "--num_layers", 3)
    assert r.returncode == 0 and "output: (B, E)" in r.stdout, r.stderr
