"""sv.sh stage 1 runs its extraction jobs through $cuda_cmd on --extract_device cuda* (as stage 3 does
online) and through $train_cmd otherwise: a recipe whose cmd.sh records the job command and fails it."""
from __future__ import annotations

import os
import subprocess

import pytest

from helpers import TEMPLATE
from upmp.data.kaldi_dir import DataDir


@pytest.fixture
def recipe(tmp_path):
    d = tmp_path / "egs" / "x" / "sv1"
    d.mkdir(parents=True)
    for name in ("sv.sh", "path.sh", "db.sh", "utils"):
        (d / name).symlink_to(TEMPLATE / name)
    (d / "job").write_text('#!/usr/bin/env bash\necho "$*" >> jobs.log\nexit 1\n')  # <name> JOB=1:N log command
    (d / "job").chmod(0o755)
    (d / "cmd.sh").write_text(f'export train_cmd="{d}/job train_cmd" cuda_cmd="{d}/job cuda_cmd" '
                              f'decode_cmd="{d}/job decode_cmd"\n')
    for name in ("train", "test"):
        utts = [f"{name}{s}-u{u}" for s in range(2) for u in range(2)]
        DataDir({u: f"/corpus/{u}.wav" for u in utts}, {u: u.split("-")[0] for u in utts}).write(d / "data" / name)
    (d / "data" / "test" / "trials").write_text("test0-u0 test1-u0 nontarget\n")
    return d


@pytest.mark.parametrize("device, cmd", [("cpu", "train_cmd"), ("cuda:1", "cuda_cmd")])
def test_extraction_jobs_use_the_device_command(recipe, device, cmd):
    r = subprocess.run(["./sv.sh", "--stage", "1", "--stop_stage", "1", "--upstream", "wavlm_local",
                        "--tiny_upstream", "true", "--nj", "2", "--train_set", "train", "--test_sets", "test",
                        "--extract_device", device], cwd=recipe, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 1, r.stderr[-3000:]   # the recording job fails: the stage stops at the first set
    jobs = (recipe / "jobs.log").read_text().splitlines()
    assert len(jobs) == 1
    assert jobs[0].startswith(f"{cmd} JOB=1:2 dump/wavlm_local_wavlm_tiny/train/log/extract.JOB.log ")
    assert "-m upmp.bin.extract_layers --data_dir dump/wavlm_local_wavlm_tiny/train/todo/split2utt/JOB" in jobs[0]
    assert f"--device {device} " in jobs[0] and jobs[0].endswith("--purpose train")
