"""Fault injection (issue 12): each bad input or interruption gets its exit status, ONE line on stderr
naming the file / line / utterance and what to do, no traceback, and nothing already written lost."""
import ast
import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import write_data_dir
from helpers import train
from helpers import run_module as run, one_line_error
from upmp.data.layer_stacks import LayerStackMeta

ROOT = Path(__file__).resolve().parents[2]
UTILS = ROOT / "egs" / "TEMPLATE" / "sv1" / "utils"


# --- scoring --------------------------------------------------------------------------------------

def test_score_file_with_a_trial_twice_is_refused(tmp_path):
    (tmp_path / "trials").write_text("a b target\nc d nontarget\n")
    (tmp_path / "scores").write_text("a b 0.9\nc d 0.1\na b 0.2\n")
    (tmp_path / "results.json").write_text("{}\n")  # e.g. an earlier report: untouched
    r = run("upmp.bin.compute_metrics", "--trials", tmp_path / "trials", "--scores", tmp_path / "scores")
    one_line_error(r, f"{tmp_path}/scores:3: trial 'a b' is scored twice (first on line 1)", "remove one")
    assert (tmp_path / "results.json").read_text() == "{}\n"


def test_score_on_an_empty_trial_list(tmp_path):
    import kaldiio
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/x.ark,{tmp_path}/x.scp") as w:
        w("a", np.ones(4, dtype=np.float32))
    (tmp_path / "trials").write_text("")
    (tmp_path / "scores").write_text("a a 1.000000\n")  # from an earlier run: must survive
    r = run("upmp.bin.score", "--embeddings", tmp_path / "x.scp", "--trials", tmp_path / "trials",
            "--out", tmp_path / "scores")
    one_line_error(r, f"{tmp_path}/trials: no trials (the file is empty)")
    assert (tmp_path / "scores").read_text() == "a a 1.000000\n"


# --- upstreams ------------------------------------------------------------------------------------

def test_s3prl_download_without_network(tmp_path):
    """A name whose weights S3PRL must download, with no network (conftest.py's proxy on a closed port
    makes that deterministic) and an empty cache: which name, where S3PRL looked, the two ways out."""
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    r = run("upmp.bin.check_upstream", "--upstream", "wavlm_base_plus", env=env)
    one_line_error(r, "--upstream wavlm_base_plus:", f"{tmp_path}/.cache/s3prl/download",
                   "S3PRLUpstream('wavlm_base_plus')", "--upstream wavlm_local --upstream_ckpt", "hf:")


def test_sv_sh_checks_the_upstream_once_before_the_jobs():
    sv = (ROOT / "egs" / "TEMPLATE" / "sv1" / "sv.sh").read_text()
    stage1 = sv[sv.index('log "Stage 1: layer stacks'):sv.index("for run in ${runs}; do")]
    assert stage1.count("upmp.bin.check_upstream") == 1
    assert stage1.index("upmp.bin.check_upstream") < stage1.index("for set in")  # once, not per set / job


def test_stacks_of_another_upstream_with_the_same_shape(dump):
    assert train(dump, dump / "exp").returncode == 0  # trained on stacks of upstream "test"
    common = ["--model", dump / "exp/model.pt", "--layers_scp", dump / "dump/layers.scp", "--out_dir", dump / "emb"]
    assert run("upmp.bin.extract_embeddings", *common).returncode == 0
    before = (dump / "emb" / "xvector.ark").read_bytes()
    LayerStackMeta(3, 8, 0.02, "hubert_local").write(str(dump / "dump"))
    r = run("upmp.bin.extract_embeddings", *common)
    one_line_error(r, f"{dump}/dump/layers.scp: layer stacks of upstream 'hubert_local', but the model was trained "
                      f"on 'test'", "--allow_other_upstream")
    assert (dump / "emb" / "xvector.ark").read_bytes() == before and (dump / "emb" / "xvector.scp").is_file()
    assert run("upmp.bin.extract_embeddings", *common, "--allow_other_upstream").returncode == 0


# --- stage 1: disk full, interruptions, failing jobs -------------------------------------------------

def _extract(data_dir, prefix, ckpt, capsys=None, extra=()):
    from upmp.bin.common import run_main
    from upmp.bin.extract_layers import main
    run_main(main, ["--data_dir", str(data_dir), "--out_prefix", str(prefix), "--upstream", "wavlm_local",
                    "--upstream_ckpt", str(ckpt), *extra])


def test_disk_full_while_writing_layer_stacks(small_data_dir, tiny_wavlm, tmp_path, monkeypatch, capsys):
    out = tmp_path / "dump" / "set"
    _extract(small_data_dir, out / "layers.1.1", tiny_wavlm)  # a finished earlier job: must survive
    finished = (out / "layers.1.1.scp").read_text()
    from upmp.data.layer_stacks import LayerStackWriter
    real_write, calls = LayerStackWriter.write, []

    def write_until_full(self, utt, stack):
        calls.append(utt)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, utt, stack)
    monkeypatch.setattr(LayerStackWriter, "write", write_until_full)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _extract(small_data_dir, out / "layers.2.1", tiny_wavlm)
    assert e.value.code == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ": error: " in ln]
    assert len(err) == 1 and "Traceback" not in err[0]
    assert f"{out}: no space left on the device while writing layer stacks" in err[0]
    assert f"written to {out}/layers.2.1.ark, 2 utterances complete" in err[0]
    assert "this job needs about" in err[0] and "for its 9 utterances" in err[0]
    assert "free space there" in err[0] and "rerun" in err[0]
    assert not (out / "layers.2.1.scp").exists() and not (out / "layers.2.1.scp.tmp").exists()  # no scp of missing data
    assert (out / "layers.1.1.scp").read_text() == finished


def test_non_finite_layer_stacks_are_not_written(small_data_dir, tiny_wavlm, tmp_path, monkeypatch, capsys):
    """An upstream that returns NaN (broken weights) on finite audio: one line naming the utterance,
    no scp; float16 storage refuses values it would turn into inf."""
    from upmp.upstream.s3prl import S3PRLUpstream
    real = S3PRLUpstream.forward
    out = tmp_path / "dump" / "set"
    for value, storage, message in ((float("nan"), "float32", "values are NaN or inf"),
                                    (1e6, "float16", "beyond float16's 65504")):
        def poisoned(self, wavs, lens, value=value):
            stack, frames = real(self, wavs, lens)
            stack = stack.clone()
            stack[..., 0] = value
            return stack, frames
        monkeypatch.setattr(S3PRLUpstream, "forward", poisoned)
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            _extract(small_data_dir, out / f"layers.{storage}", tiny_wavlm, extra=("--storage", storage))
        assert e.value.code == 1
        err = [ln for ln in capsys.readouterr().err.splitlines() if ": error: " in ln]
        assert len(err) == 1 and re.search(r"utterance spk\d-utt\d: layer stack of wavlm_local", err[0]) and message in err[0]
        assert not (out / f"layers.{storage}.scp").exists()


def test_embeddings_of_a_broken_model_are_refused():
    """A model whose output is NaN (non-finite weights) names the first utterance; nothing is returned."""
    import torch
    from upmp.embeddings import embed_all
    from upmp.errors import ModelFileError

    class Broken(torch.nn.Module):
        embed_dim, padding_invariant = 3, True

        def forward(self, x, mask=None):
            return torch.full((x.shape[0], 3), float("nan"))
    def stacks(chunk):
        return (np.ones((2, 5, 4), dtype=np.float32) for _ in chunk)
    with pytest.raises(ModelFileError, match="utterance u1: the model's embedding holds NaN or inf"):
        embed_all(Broken(), ["u1", "u2"], stacks)


def test_stage1_killed_midway_resumes_and_cleans_up(small_data_dir, tiny_wavlm, tmp_path, monkeypatch, capsys):
    """Job 1 finished, job 2 killed after one utterance: the rerun extracts only job 2's utterances,
    keeps job 1's stacks, and removes the killed job's ark."""
    import kaldiio
    from upmp.data.kaldi_dir import split_data_dir
    from upmp.upstream.extract import join_layer_stacks, plan_extraction, weights_id
    from upmp.data.layer_stacks import LayerStackWriter
    weights = weights_id("wavlm_local", str(tiny_wavlm))  # the stacks name the checkpoint's bytes
    data = tmp_path / "data" / "set"
    import shutil
    shutil.copytree(small_data_dir, data)
    out = tmp_path / "dump" / "set"
    plan = plan_extraction(str(data), str(out), [], "wavlm_local", "float32", weights=weights)
    assert len(plan.todo) == 9 and not plan.reused
    jobs = split_data_dir(out / "todo", 2, per_utt=True)
    _extract(jobs[0], out / "layers.r1.1", tiny_wavlm)
    real_write, calls = LayerStackWriter.write, []

    def killed(self, utt, stack):
        calls.append(utt)
        if len(calls) > 1:
            raise KeyboardInterrupt  # as a kill: the ark and the temporary scp stay behind
        real_write(self, utt, stack)
    monkeypatch.setattr(LayerStackWriter, "write", killed)
    with pytest.raises(SystemExit):
        _extract(jobs[1], out / "layers.r1.2", tiny_wavlm)
    monkeypatch.setattr(LayerStackWriter, "write", real_write)
    assert (out / "layers.r1.2.ark").stat().st_size > 0 and not (out / "layers.r1.2.scp").exists()
    job1 = dict(kaldiio.load_scp(str(out / "layers.r1.1.scp")))
    job2_utts = sorted((Path(jobs[1]) / "utt2spk").read_text().split()[::2])

    plan = plan_extraction(str(data), str(out), [], "wavlm_local", "float32", weights=weights)  # the rerun
    assert sorted(plan.todo) == job2_utts and sorted(plan.reused) == sorted(job1) and plan.resumed == len(job1)
    _extract(out / "todo", out / "layers.r2.1", tiny_wavlm)
    assert join_layer_stacks(str(data), str(out), "r2") == 9
    assert not (out / "layers.r1.2.ark").exists()  # nothing pointed into it
    assert (out / "layers.r1.1.ark").is_file()
    joined = dict(kaldiio.load_scp(str(out / "layers.scp")))
    assert sorted(joined) == sorted((data / "utt2spk").read_text().split()[::2])
    for utt, mat in job1.items():
        np.testing.assert_array_equal(joined[utt], mat)
    from upmp.upstream.extract import layer_stacks_done
    meta = json.loads((out / "layer_stack.json").read_text())
    assert layer_stacks_done(str(data), str(out), meta["upstream"], "float32", weights=weights)   # the join wrote the record
    assert meta["weights_sha256"] == weights
    mtime = (out / "layers.scp").stat().st_mtime_ns
    assert join_layer_stacks(str(data), str(out)) == 9 and (out / "layers.scp").stat().st_mtime_ns == mtime  # same lines


def test_failed_job_shows_its_error_line_and_the_users_wav_scp_line(tmp_path):
    data = write_data_dir(tmp_path / "data" / "set", {f"s{i}-u{i}": (f"s{i}", 0.5, 300) for i in range(4)})
    lines = (data / "wav.scp").read_text().splitlines()
    lines[3] = "s3-u3 /nonexistent/s3-u3.wav"
    (data / "wav.scp").write_text("\n".join(lines) + "\n")
    r = run("upmp.bin.data_dir", "split", "--per-utt", data, 2)
    assert r.returncode == 0, r.stderr
    from upmp.upstream.tiny import build_tiny_checkpoint
    ckpt = build_tiny_checkpoint("wavlm", str(tmp_path / "tiny.pt"), 2, 32, 64, 2, 32, 0)
    r = subprocess.run(["bash", str(UTILS / "run.pl"), "JOB=1:2", f"{tmp_path}/log/extract.JOB.log",
                        sys.executable, "-m", "upmp.bin.extract_layers", "--data_dir", f"{data}/split2utt/JOB",
                        "--source_data_dir", str(data), "--out_prefix", f"{tmp_path}/dump/layers.JOB",
                        "--upstream", "wavlm_local", "--upstream_ckpt", ckpt],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1
    assert f"run.pl: 1 / 2 failed, log is in {tmp_path}/log/extract.*.log" in r.stderr
    assert (f"run.pl: job 2 ({tmp_path}/log/extract.2.log): extract_layers.py: error: {data}/wav.scp:4: "
            f"utterance s3-u3: cannot read audio file '/nonexistent/s3-u3.wav'") in r.stderr
    assert "Traceback" not in r.stderr
    assert (tmp_path / "dump" / "layers.1.scp").is_file() and not (tmp_path / "dump" / "layers.2.scp").exists()


def test_malformed_job_command_line_is_one_line():
    r = subprocess.run(["bash", str(UTILS / "run.pl"), "--bogus", "1", "JOB=1:2", "log.JOB", "true"],
                       capture_output=True, text=True, cwd=ROOT)
    one_line_error(r, "run.pl: unknown option --bogus", "usage: run.pl")


# --- every entry point: the same shape ----------------------------------------------------------------

def _entry_modules():
    return sorted(p.stem for p in (ROOT / "upmp" / "bin").glob("*.py") if p.stem not in ("__init__", "common", "console"))


@pytest.mark.parametrize("name", _entry_modules())
def test_entry_point_shape(name):
    tree = ast.parse((ROOT / "upmp" / "bin" / f"{name}.py").read_text())
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "main" in funcs and "get_parser" in funcs, name
    assert "make_parser(__doc__" in ast.unparse(funcs["get_parser"]), f"{name}: get_parser does not start from make_parser"
    assert "cli" not in funcs, f"{name}: console scripts go through upmp.bin.console (setup.py ENTRY_MODULES)"
    assert [a.arg for a in funcs["main"].args.args] == ["argv"] and funcs["main"].args.defaults
    guard = tree.body[-1]
    assert isinstance(guard, ast.If) and ast.unparse(guard.body[0]) == "run_main(main)", name
    handlers = [h for h in ast.walk(tree) if isinstance(h, ast.ExceptHandler)]
    # ValueError is caught only where it is a parse outcome, not a refused input: perturb_speed's
    # factor parsing, embed's shlex.split of a pipe entry with unbalanced quotes
    assert all(ast.unparse(h.type) != "ValueError" or name in ("perturb_speed", "embed") for h in handlers if h.type), name
    setup_text = (ROOT / "setup.py").read_text()
    assert f'"{name}"' in setup_text, f"{name} has no console script in setup.py ENTRY_MODULES"
    from upmp.bin import console
    assert callable(getattr(console, name))
