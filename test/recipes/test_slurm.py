"""slurm.pl against a real one-node Slurm (munged, slurmctld, slurmd started here as root).

The cluster lives in a temporary directory: its own slurm.conf (free ports), state, spool,
logs, pid files and munge key and socket; the daemons are stopped by their pid files at the
end, also when a test fails. The mini recipe's stages 1 and 3 on Slurm (UPMP_CMD_BACKEND=slurm)
must write what they write with run.pl; a failing job must fail the stage. Without root or
without the Debian packages (installed here by tools/install.sh --slurm where apt-get works)
the module is skipped, saying why.
"""
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import kaldiio
import numpy as np
import pytest

from helpers import ROOT, TEMPLATE, bash_env
from helpers import make_recipe, run

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo")
EXP = "exp/upmp_ge2e"
SETS = ("voxceleb1_dev", "voxceleb1_test")


def slurm_installed():
    return all(shutil.which(p, path=os.environ["PATH"] + ":/usr/sbin:/sbin") for p in DAEMONS + CLIENTS)


def ensure_slurm():
    """Skips the module where a real Slurm cannot run here."""
    if os.geteuid() != 0:
        pytest.skip("a real Slurm needs root (munged, slurmctld and slurmd run as root here)")
    if not slurm_installed():
        if not shutil.which("apt-get"):
            pytest.skip("Slurm is not installed and there is no apt-get (bash tools/install.sh --slurm)")
        r = subprocess.run(["bash", str(ROOT / "tools" / "install.sh"), "--slurm"], capture_output=True, text=True,
                           timeout=600)
        if r.returncode != 0 or not slurm_installed():
            pytest.skip(f"bash tools/install.sh --slurm failed: {r.stderr.strip()[-500:]}")


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def slurm_conf(d: Path) -> str:
    node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    host = node.split()[0].split("=", 1)[1]  # slurmd's own name for this machine: hostname -s
    ctld_port, slurmd_port = free_ports(2)
    return f"""ClusterName=upmptest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited


def stop(pid_file: Path):
    if not pid_file.is_file():
        return
    pid = int(pid_file.read_text().split()[0])
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if not alive(pid):
            return
        os.kill(pid, sig)
        deadline = time.time() + wait
        while alive(pid) and time.time() < deadline:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """{env with SLURM_CONF} of a running one-node cluster; its daemons stopped afterwards."""
    ensure_slurm()
    d = tmp_path_factory.mktemp("slurm")
    d.chmod(0o700)  # munged refuses a key or socket others can reach
    for sub in ("state", "spool", "log"):
        (d / sub).mkdir()
    env = dict(bash_env(), SLURM_CONF=str(d / "slurm.conf"), PATH=os.environ["PATH"] + ":/usr/sbin:/sbin")
    try:
        (d / "munge.key").write_bytes(os.urandom(1024))
        (d / "munge.key").chmod(0o400)
        subprocess.run(["munged", "--force", f"--key-file={d}/munge.key", f"--socket={d}/munge.socket",
                        f"--pid-file={d}/munged.pid", f"--log-file={d}/log/munged.log", f"--seed-file={d}/munged.seed"],
                       check=True, env=env, timeout=30)
        (d / "slurm.conf").write_text(slurm_conf(d))
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([daemon], check=True, env=env, timeout=30)
        deadline = time.time() + 60
        while subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True,
                             env=env).stdout.strip() != "idle":
            if time.time() > deadline:
                logs = "".join(p.read_text()[-1500:] for p in sorted((d / "log").glob("*.log")))
                raise AssertionError(f"the Slurm node is not idle after 60 s:\n{logs}")
            time.sleep(0.5)
        yield env
    finally:
        jobs = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True, env=env).stdout.split()
        if jobs:
            subprocess.run(["scancel", *jobs], env=env)
        for daemon in ("slurmd", "slurmctld", "munged"):
            stop(d / f"{daemon}.pid")


@pytest.fixture(scope="module")
def recipes(cluster, tmp_path_factory):
    """The mini recipe (6 speakers, 1-1.5 s utterances) through stage 3 with run.pl, then stages 1
    and 3 again on Slurm into dump_slurm/ and exp_slurm/ (stage 2 skipped: run.pl's model)."""
    recipe = make_recipe(tmp_path_factory.mktemp("recipe"))
    (recipe / "conf" / "corpus.yaml").write_text(
        "num_speakers: 6\nnum_test_speakers: 2\nsessions_per_speaker: 2\nutts_per_session: 2\n"
        "min_seconds: 1.0\nmax_seconds: 1.5\nnj: 1\n")
    common = ("--valid_set", "", "--nj", "2")
    local = {"UPMP_CMD_BACKEND": "local", "OMP_NUM_THREADS": "1"}
    r = run(recipe, "--stage", "0", "--stop_stage", "3", *common, "--local_data_opts", "--seed 0 --valid_speakers 2",
            "--train_args", "--train_conf.steps 4 --train_conf.batch_size 4", env=local)
    assert r.returncode == 0, r.stderr[-3000:]
    (recipe / "exp_slurm" / "upmp_ge2e").mkdir(parents=True)
    shutil.copy(recipe / EXP / "model.pt", recipe / "exp_slurm" / "upmp_ge2e" / "model.pt")
    on_slurm = dict(cluster, UPMP_CMD_BACKEND="slurm", OMP_NUM_THREADS="1")
    r = run(recipe, "--stage", "1", "--stop_stage", "3", *common, "--dumpdir", "dump_slurm", "--expdir", "exp_slurm",
            env=on_slurm)
    assert r.returncode == 0, r.stderr[-3000:]
    return recipe, r, on_slurm


def test_stages_1_and_3_on_slurm_write_what_run_pl_writes(recipes, monkeypatch):
    recipe, r, env = recipes
    monkeypatch.chdir(recipe)  # the scp files point into the arks from there
    assert "model.pt exists, skipping" in r.stderr
    for s in SETS:
        local = kaldiio.load_scp(str(recipe / "dump/ge2e" / s / "layers.scp"))
        slurm = kaldiio.load_scp(str(recipe / "dump_slurm/ge2e" / s / "layers.scp"))
        assert sorted(slurm) == sorted(local) and len(local) == 8
        for u in local:
            assert np.array_equal(slurm[u], local[u]), (s, u)
        local = kaldiio.load_scp(str(recipe / EXP / "embeddings" / s / "xvector.scp"))
        slurm = kaldiio.load_scp(str(recipe / "exp_slurm/upmp_ge2e/embeddings" / s / "xvector.scp"))
        assert sorted(slurm) == sorted(local)
        for u in local:
            np.testing.assert_allclose(slurm[u], local[u], rtol=1e-5, atol=1e-6)
        # the scheduler ran them: slurm.pl's array-job script, the jobs' Slurm output files
        q = recipe / "dump_slurm/ge2e" / s / "log" / "q"
        assert (q / "extract.sh").is_file() and sorted(p.name for p in q.glob("extract.*.out")) == \
            ["extract.1.out", "extract.2.out"]
        assert (recipe / "exp_slurm/upmp_ge2e/embeddings" / s / "q" / "extract.1.out").is_file()
    ctld_log = Path(env["SLURM_CONF"]).with_name("log") / "slurmctld.log"
    assert ctld_log.read_text().count("WEXITSTATUS 0") >= 2 * len(SETS) + len(SETS)  # 2 stage-1 jobs + 1 stage-3 job per set


def test_a_failing_job_fails_the_stage(recipes):
    recipe, _, env = recipes
    broken = recipe / "exp_broken" / "upmp_ge2e"
    broken.mkdir(parents=True)
    (broken / "model.pt").write_bytes(b"not a model")
    r = run(recipe, "--stage", "3", "--stop_stage", "3", "--valid_set", "", "--dumpdir", "dump_slurm",
            "--expdir", "exp_broken", env=env)
    log = broken / "embeddings" / "voxceleb1_dev" / "extract.log"
    assert r.returncode != 0 and f"slurm.pl: job failed, log is in {log.relative_to(recipe)}" in r.stderr
    assert "# Ended (code 1)" in log.read_text()
    assert not (broken / "embeddings" / "voxceleb1_dev" / "xvector.scp").exists()
    assert "Successfully finished" not in r.stderr


def test_a_job_the_scheduler_kills_fails(cluster, tmp_path):
    """A cancelled job writes no exit status: slurm.pl notices it left the queue and says where Slurm wrote why."""
    p = subprocess.Popen([str(TEMPLATE / "utils" / "slurm.pl"), "JOB=1:2", "log/s.JOB.log", "sleep", "300"],
                         cwd=tmp_path, env=cluster, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while len(list(tmp_path.glob("log/s.*.log"))) < 2 and time.time() < deadline:  # both jobs run
            time.sleep(0.5)
        subprocess.run(["scancel", "--name", "s"], env=cluster, check=True)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 1 and "slurm.pl: 2 / 2 failed, log is in log/s.*.log" in err
    assert "slurm.pl: job 1 ended without an exit status (killed by the scheduler?), see log/q/s.1.out" in err
    assert "CANCELLED" in (tmp_path / "log" / "q" / "s.1.out").read_text()
