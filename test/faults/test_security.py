"""Fault injection (issue 19, security): a file upmp reads never runs code, and a package names only
its own files. Each exploit is a real one: a pickle whose __reduce__ runs `touch <marker>`, shown to
run under plain pickle, then refused by every upmp path (marker absent, one error line, rc 1)."""
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from helpers import TRAIN_CONFIG, bash_env
from helpers import run_module as run, one_line_error, snapshot

ROOT = Path(__file__).resolve().parents[2]
REFUSED = "refused: holds Python objects beyond tensors and plain data (it names GLOBAL posix.system); " \
          "loading it could run code"
AGAIN = "package the model again"


class _Payload:
    """A pickle that, when unpickled, runs a shell command writing a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(path: Path, marker: Path, content=None) -> Path:
    """torch.save of a checkpoint-like dict carrying the payload; shown to run under plain pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(content if content is not None else {"Config": {}, "x": _Payload(marker)}, path)  # no tensors
    with zipfile.ZipFile(path) as z:  # a real exploit: plain unpickling runs it
        pickle.loads(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))))
    assert marker.exists()
    marker.unlink()
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rewrite_manifest(pkg: Path, info: dict, rehash=True) -> None:
    """What an attacker controls: package.json with matching file hashes and manifest checksum."""
    if rehash:
        info["files"] = {str(p.relative_to(pkg)): sha256(p) for p in sorted(pkg.rglob("*"))
                         if p.is_file() and p.name not in ("package.json", "package.json.sha256", "README.md")}
    (pkg / "package.json").write_text(json.dumps(info, indent=1) + "\n")
    (pkg / "package.json.sha256").write_text(f"{sha256(pkg / 'package.json')}  package.json\n")


@pytest.fixture(scope="module")
def package(tiny_experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "model"
    r = run("upmp.bin.package_model", "--exp_dir", tiny_experiment / "exp" / "upmp", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def copy_package(package, tmp_path) -> tuple:
    pkg = tmp_path / "pkg"
    shutil.copytree(package, pkg)
    return pkg, json.loads((pkg / "package.json").read_text())


def load_model_in_a_subprocess(pkg):
    """upmp.load_model(PKG) as a user's script calls it: the exception's type and its message."""
    code = ("import sys, upmp\ntry:\n    upmp.load_model(sys.argv[1])\nexcept Exception as e:\n"
            "    print(type(e).__name__ + ': ' + str(e)); sys.exit(1)\nprint('loaded')")
    return subprocess.run([sys.executable, "-c", code, str(pkg)], capture_output=True, text=True, env=bash_env())


# --- a package's upstream checkpoint -----------------------------------------------------------

@pytest.mark.parametrize("upstream", ["distiller_local", "mockingjay_local", "wavlm_local"])
def test_package_with_a_crafted_local_upstream_checkpoint(tiny_experiment, package, tmp_path, upstream):
    """S3PRL's distiller and mockingjay builders unpickle with weights_only=False: before the fix
    upmp-verify and upmp.load_model ran the payload (wavlm_local: an UnpicklingError traceback)."""
    pkg, info = copy_package(package, tmp_path)
    marker = tmp_path / "pwned"
    evil_checkpoint(pkg / "upstream" / "model.ckpt", marker)
    info["upstream"].update(name=upstream, ckpt="upstream/model.ckpt", provider="s3prl")
    rewrite_manifest(pkg, info)
    before = snapshot(pkg)
    wav = tiny_experiment / "data/wav/spk0-utt0.wav"
    r = run("upmp.bin.verify", "--model", pkg, wav, wav)
    one_line_error(r, f"verify.py: error: {pkg}/upstream/model.ckpt: {REFUSED}", "do not use this package", AGAIN)
    assert not marker.exists()
    api = load_model_in_a_subprocess(pkg)
    assert api.returncode == 1 and api.stdout.startswith(f"ModelFileError: {pkg}/upstream/model.ckpt: {REFUSED}"), \
        api.stdout + api.stderr
    assert not marker.exists() and "Traceback" not in api.stderr
    assert snapshot(pkg) == before


def test_package_with_a_crafted_hf_upstream(package, tmp_path):
    """hf:<dir>: a pickle-based weights file in the directory is refused before transformers sees it."""
    pkg, info = copy_package(package, tmp_path)
    marker = tmp_path / "pwned"
    hf = pkg / "upstream" / "hf"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text('{"model_type": "wavlm"}\n')
    evil_checkpoint(hf / "pytorch_model.bin", marker)
    info["upstream"].update(name="hf:/somewhere/wavlm", ckpt="upstream/hf", provider="transformers")
    rewrite_manifest(pkg, info)
    api = load_model_in_a_subprocess(pkg)
    assert api.returncode == 1 and f"{hf}/pytorch_model.bin: {REFUSED}" in api.stdout, api.stdout + api.stderr
    assert not marker.exists()


# --- checkpoints given on the command line ------------------------------------------------------

def test_extract_layers_refuses_a_crafted_upstream_checkpoint(small_data_dir, tmp_path):
    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "distilhubert.ckpt", marker)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "earlier.scp").write_text("a b\n")  # written before: intact
    r = run("upmp.bin.extract_layers", "--data_dir", small_data_dir, "--out_prefix", tmp_path / "out" / "layers",
            "--upstream", "distiller_local", "--upstream_ckpt", evil)
    line = one_line_error(r, f"extract_layers.py: error: {evil}: {REFUSED}", "if you trust its source",
                          "hf:<save_pretrained dir> with safetensors")
    assert not marker.exists()
    assert snapshot(tmp_path / "out") == {"earlier.scp": b"a b\n"}
    # the re-save command the line gives works on a trusted file, and its output is accepted
    good = tmp_path / "trusted.ckpt"
    torch.save({"Config": {"x": 1}, "Distiller": {"w": torch.ones(2)}, "Scheduler": torch.optim.SGD([torch.ones(1)], 0.1)},
               good)
    assert "refused" in one_line_error(run("upmp.bin.check_upstream", "--upstream", "distiller_local",
                                           "--upstream_ckpt", good))
    command = line.split("plain data: ", 1)[1].split(" and use that file")[0].replace("python", sys.executable, 1)
    assert subprocess.run(command.replace(str(evil), str(good)), shell=True, env=bash_env()).returncode == 0
    from upmp.safe_load import check_checkpoint
    check_checkpoint(f"{good}.data.pt", "x")  # no error: tensors and plain data only


@pytest.mark.parametrize("upstream", ["mockingjay_local", "ge2e"])
def test_check_upstream_refuses_a_crafted_checkpoint(tmp_path, upstream):
    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "model.ckpt", marker)
    r = run("upmp.bin.check_upstream", "--upstream", upstream, "--upstream_ckpt", evil)
    one_line_error(r, f"check_upstream.py: error: {evil}: {REFUSED}")
    assert not marker.exists()


def test_online_training_refuses_a_crafted_upstream_checkpoint(small_data_dir, tmp_path):
    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "model.ckpt", marker)
    (tmp_path / "conf.yaml").write_text(yaml.safe_dump(TRAIN_CONFIG))
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "notes.txt").write_text("mine\n")
    r = run("upmp.bin.train", "--config", tmp_path / "conf.yaml", "--train_data_dir", small_data_dir,
            "--upstream", "distiller_local", "--upstream_ckpt", evil, "--exp_dir", exp)
    one_line_error(r, f"train.py: error: {evil}: {REFUSED}")
    assert not marker.exists() and not (exp / "model.pt").exists()
    assert (exp / "notes.txt").read_text() == "mine\n"


def test_extract_embeddings_refuses_a_crafted_upstream_checkpoint(tiny_experiment, tmp_path):
    """Stage 3 of an online experiment builds the upstream from --upstream / --upstream_ckpt too."""
    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "model.ckpt", marker)
    r = run("upmp.bin.extract_embeddings", "--model", tiny_experiment / "exp/upmp/model.pt", "--data_dir",
            tiny_experiment / "data", "--upstream", "distiller_local", "--upstream_ckpt", evil,
            "--out_dir", tmp_path / "emb")
    one_line_error(r, f"extract_embeddings.py: error: {evil}: {REFUSED}")
    assert not marker.exists() and not (tmp_path / "emb" / "xvector.scp").exists()


def test_package_model_refuses_a_crafted_upstream_checkpoint(tiny_experiment, tmp_path):
    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "model.ckpt", marker)
    r = run("upmp.bin.package_model", "--exp_dir", tiny_experiment / "exp" / "upmp", "--out", tmp_path / "pkg",
            "--upstream", "distiller_local", "--upstream_ckpt", evil)
    one_line_error(r, f"package_model.py: error: {evil}: {REFUSED}")
    assert not marker.exists() and not (tmp_path / "pkg").exists()


def test_s3prl_hub_name_with_a_crafted_file_in_the_download_cache(tmp_path):
    """distilhubert: S3PRL reads the weights from its cache (a file placed there by anyone who can
    write it) with weights_only=False; the cached file is checked first."""
    home = tmp_path / "home"
    url = "https://huggingface.co/leo19941227/distilhubert/resolve/main/distilhubert_ls960_4-8-12.ckpt"
    env = dict(bash_env(), HOME=str(home))  # no network: conftest.py's proxy on a closed port
    r = subprocess.run([sys.executable, "-c", "import sys; from s3prl.util.download import _urls_to_filepaths as f; "
                        "print(f(sys.argv[1], download=False))", url], capture_output=True, text=True, env=env)
    cached = Path(r.stdout.strip())
    assert r.returncode == 0 and cached.name.endswith("distilhubert_ls960_4-8-12.ckpt") and str(home) in str(cached)
    marker = tmp_path / "pwned"
    evil_checkpoint(cached, marker)
    r = run("upmp.bin.check_upstream", "--upstream", "distilhubert", env=env)
    one_line_error(r, f"check_upstream.py: error: {cached}: {REFUSED}", "delete it from S3PRL's cache")
    assert not marker.exists()


def test_argparse_namespace_in_a_checkpoint_is_data(tmp_path):
    """S3PRL's pretraining runner and fairseq store their arguments as an argparse.Namespace: allowed,
    and nothing else beyond plain data."""
    import argparse
    from upmp.errors import UpstreamError
    from upmp.safe_load import check_checkpoint, load_torch_data
    torch.save({"Args": argparse.Namespace(lr=0.1, name="x"), "Distiller": {"w": torch.ones(2)}}, tmp_path / "ok.ckpt")
    assert load_torch_data(tmp_path / "ok.ckpt", "x", "y")["Args"].lr == 0.1
    from fractions import Fraction
    torch.save({"Args": argparse.Namespace(lr=Fraction(1, 10))}, tmp_path / "other.ckpt")
    with pytest.raises(UpstreamError, match=r"other\.ckpt: refused: .*GLOBAL fractions\.Fraction"):
        check_checkpoint(tmp_path / "other.ckpt", "x", error=UpstreamError)


# --- package confinement and package.json -----------------------------------------------------

@pytest.mark.parametrize("fault", ["ckpt_outside", "files_outside", "symlink_out", "ckpt_not_hashed"])
def test_package_paths_stay_inside_the_package(tiny_experiment, package, tmp_path, fault):
    pkg, info = copy_package(package, tmp_path)
    if fault == "ckpt_outside":
        info["upstream"].update(name="wavlm_local", ckpt="../../../../etc/passwd")
        rewrite_manifest(pkg, info)
        want = "upstream.ckpt: the path '../../../../etc/passwd' leads outside the package"
    elif fault == "files_outside":
        rewrite_manifest(pkg, info)
        info["files"]["../../../../etc/passwd"] = sha256(Path("/etc/passwd"))
        rewrite_manifest(pkg, info, rehash=False)
        want = "files: the path '../../../../etc/passwd' leads outside the package"
    elif fault == "symlink_out":
        (pkg / "upstream").mkdir()
        (pkg / "upstream" / "model.ckpt").symlink_to("/etc/passwd")
        info["upstream"].update(name="wavlm_local", ckpt="upstream/model.ckpt")
        rewrite_manifest(pkg, info)
        want = "the path 'upstream/model.ckpt' leads outside the package"
    else:
        (pkg / "upstream").mkdir()
        shutil.copy(package / "backend.pt", pkg / "upstream" / "model.ckpt")
        info["upstream"].update(name="wavlm_local", ckpt="upstream/model.ckpt")
        rewrite_manifest(pkg, info, rehash=False)
        want = "upstream.ckpt 'upstream/model.ckpt' is not among the package's hashed files"
    wav = tiny_experiment / "data/wav/spk0-utt0.wav"
    r = run("upmp.bin.verify", "--model", pkg, wav, wav)
    one_line_error(r, want, AGAIN)
    api = load_model_in_a_subprocess(pkg)
    assert api.returncode == 1 and api.stdout.startswith("ModelFileError: ") and want in api.stdout


def test_nan_calibration_scale_is_refused(tiny_experiment, package, tmp_path):
    """A NaN scale gave llr nan silently; corrupted (checksum) or written so (schema): one line each."""
    pkg, info = copy_package(package, tmp_path)
    text = (pkg / "package.json").read_text()
    scale = json.dumps(info["calibration"]["scale"])
    (pkg / "package.json").write_text(text.replace(f'"scale": {scale}', '"scale": NaN'))
    wav = tiny_experiment / "data/wav/spk0-utt0.wav"
    r = run("upmp.bin.verify", "--model", pkg, wav, wav)
    one_line_error(r, f"{pkg}/package.json: corrupted (checksum differs from package.json.sha256)", AGAIN)
    info["calibration"]["scale"] = float("nan")
    rewrite_manifest(pkg, info)
    r = run("upmp.bin.verify", "--model", pkg, wav, wav)
    one_line_error(r, f"{pkg}/package.json: calibration.scale: nan is not a finite number", AGAIN)
    (pkg / "package.json.sha256").unlink()  # a package of an earlier upmp
    r = run("upmp.bin.verify", "--model", pkg, wav, wav)
    one_line_error(r, f"{pkg}/package.json.sha256: missing from the package", AGAIN)


def _drop_mean(info):
    del info["mean"]


@pytest.mark.parametrize("edit, message", [
    (_drop_mean, "top level: missing key 'mean'"),
    (lambda i: i.update(extra=1), "top level: unknown key 'extra'"),
    (lambda i: i.update(embed_dim="16"), "embed_dim: expected an int, got \"16\""),
    (lambda i: i["threshold"].update(score="high"), "threshold.score: expected a number, got \"high\""),
    (lambda i: i["upstream"].update(ckpt=3), "upstream.ckpt: expected a str, got 3"),
    (lambda i: i.update(mean=i["mean"][:3]), "mean: 3 values for embed_dim 16"),
    (lambda i: i["layer_stack"].pop("dim"), "layer_stack: missing key 'dim'"),
    (lambda i: i.update(files={"backend.pt": "abc"}), "files[\"backend.pt\"]: expected a SHA-256 hex digest"),
])
def test_package_json_with_missing_extra_or_wrong_typed_keys(package, tmp_path, edit, message):
    from upmp.errors import ModelFileError
    from upmp.inference import load_model
    pkg, info = copy_package(package, tmp_path)
    edit(info)
    rewrite_manifest(pkg, info, rehash="files" not in message)
    with pytest.raises(ModelFileError) as e:
        load_model(str(pkg))
    assert str(e.value).startswith(f"{pkg}/package.json: {message}"), str(e.value)
    assert str(e.value).endswith(f"; not a package this upmp writes: {AGAIN} (python -m upmp.bin.package_model)")
    assert "\n" not in str(e.value)


def test_package_json_errors_are_one_line_in_the_cli(tiny_experiment, package, tmp_path):
    pkg, info = copy_package(package, tmp_path)
    info["layer_stack"]["num_layers"] = "four"
    rewrite_manifest(pkg, info)
    wav = tiny_experiment / "data/wav/spk0-utt0.wav"
    one_line_error(run("upmp.bin.verify", "--model", pkg, wav, wav),
                   f"{pkg}/package.json: layer_stack.num_layers: expected an int, got \"four\"", AGAIN)


# --- backend.pt / upstream.pt ------------------------------------------------------------------

@pytest.mark.parametrize("fault, message", [
    ("crafted", REFUSED),
    ("empty", "an empty file; expected the backend's weights: a state dict of tensors"),
    ("tensor", "holds a Tensor; expected the backend's weights: a state dict of tensors"),
    ("list", "holds a list; expected the backend's weights"),
    ("strings", "holds a dict of other values; expected the backend's weights"),
])
def test_backend_pt_that_is_not_a_state_dict(tiny_experiment, package, tmp_path, fault, message):
    pkg, info = copy_package(package, tmp_path)
    marker = tmp_path / "pwned"
    backend = pkg / "backend.pt"
    if fault == "crafted":
        evil_checkpoint(backend, marker, {"weight": _Payload(marker)})
    elif fault == "empty":
        backend.write_bytes(b"")
    else:
        torch.save({"tensor": torch.ones(3), "list": [1, 2], "strings": {"w": "x"}}[fault], backend)
    rewrite_manifest(pkg, info)
    wav = tiny_experiment / "data/wav/spk0-utt0.wav"
    one_line_error(run("upmp.bin.verify", "--model", pkg, wav, wav), f"{backend}: {message}", AGAIN)
    assert not marker.exists()


def test_crafted_upstream_pt(tiny_experiment, package, tmp_path):
    pkg, info = copy_package(package, tmp_path)
    marker = tmp_path / "pwned"
    evil_checkpoint(pkg / "upstream.pt", marker, {"weight": _Payload(marker)})
    info["finetuned_upstream"] = True
    rewrite_manifest(pkg, info)
    wav = tiny_experiment / "data/wav/spk0-utt0.wav"
    one_line_error(run("upmp.bin.verify", "--model", pkg, wav, wav), f"{pkg}/upstream.pt: {REFUSED}",
                   "do not use this package", AGAIN)
    assert not marker.exists()


# --- upmp-embed --format npy -----------------------------------------------------------------

@pytest.mark.parametrize("utt", ["../../escaped", "/ABS/escaped", "sub/../../escaped"])
def test_embed_npy_ids_stay_inside_out(tiny_experiment, package, tmp_path, utt):
    wav = tiny_experiment / "data/wav/spk0-utt0.wav"
    utt = utt.replace("/ABS", str(tmp_path))
    scp = tmp_path / "wav.scp"
    scp.write_text(f"good {wav}\n{utt} {wav}\n")
    out = tmp_path / "a" / "out"
    out.mkdir(parents=True)
    (out / "earlier.npy").write_bytes(b"mine")
    r = run("upmp.bin.embed", "--model", package, scp, "--out", out, "--format", "npy")
    one_line_error(r, f"{scp}: utterance {utt}: utterance id {utt!r} would write {utt}.npy outside --out {out}",
                   "rename the utterance, or use --format kaldi")
    target = Path(os.path.normpath(out / f"{utt}.npy"))
    assert target.is_relative_to(tmp_path) and not target.is_relative_to(out) and not target.exists()
    assert snapshot(out) == {"earlier.npy": b"mine"}  # nothing embedded before the refusal
    if utt == "../../escaped":  # the same ids are fine in a Kaldi ark (keys there, not paths)
        r = run("upmp.bin.embed", "--model", package, scp, "--out", tmp_path / "k", "--format", "kaldi")
        assert r.returncode == 0, r.stderr[-2000:]
