"""Kaldi-style shell utilities: parse_options.sh, run.pl, slurm.pl / queue.pl command lines."""
import subprocess
from pathlib import Path

import pytest

from helpers import TEMPLATE, bash_env
from upmp.jobs import (JobArgsError, load_scheduler_config, parse_job_args, qsub_command, sbatch_command,
                       write_job_script)

SCRIPT = """
foo_bar=default
flag=true
count=1
help_message="usage: demo [options]"
. {utils}/parse_options.sh
echo "foo_bar=$foo_bar flag=$flag count=$count rest=$*"
"""


def run_options(tmp_path, *args):
    script = tmp_path / "demo.sh"
    script.write_text(SCRIPT.format(utils=TEMPLATE / "utils"))
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, cwd=tmp_path)


def test_options_set_declared_variables(tmp_path):
    r = run_options(tmp_path, "--foo-bar", "x y", "--count", "3", "pos1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "foo_bar=x y flag=true count=3 rest=pos1"
    r = run_options(tmp_path, "--foo_bar", "z", "--flag=false")
    assert r.stdout.strip() == "foo_bar=z flag=false count=1 rest="


def test_unknown_option_is_an_error(tmp_path):
    r = run_options(tmp_path, "--nope", "1")
    assert r.returncode == 1 and "invalid option --nope" in r.stderr


def test_boolean_accepts_only_true_false(tmp_path):
    r = run_options(tmp_path, "--flag", "yes")
    assert r.returncode == 1 and 'expected "true" or "false"' in r.stderr


def test_missing_value(tmp_path):
    r = run_options(tmp_path, "--count")
    assert r.returncode == 1 and "no argument provided for option --count" in r.stderr


def test_config_sourced_first_then_flags_override(tmp_path):
    (tmp_path / "c.conf").write_text("foo_bar=from_config\ncount=7\n")
    r = run_options(tmp_path, "--count", "9", "--config", "c.conf")
    assert r.stdout.strip() == "foo_bar=from_config flag=true count=9 rest="
    r = run_options(tmp_path, "--config", "missing.conf")
    assert r.returncode == 1 and "missing config" in r.stderr


def test_help(tmp_path):
    r = run_options(tmp_path, "--help")
    assert r.returncode == 0 and "usage: demo [options]" in r.stderr and r.stdout == ""


def run_pl(tmp_path, *args):
    return subprocess.run([str(TEMPLATE / "utils" / "run.pl"), *args], capture_output=True, text=True,
                          cwd=tmp_path, env=bash_env())


def test_run_pl_several_jobs(tmp_path):
    r = run_pl(tmp_path, "--max-jobs-run", "2", "JOB=1:4", "log/echo.JOB.log",
               "echo", "job JOB of 4", "|", "tr", "a-z", "A-Z")
    assert r.returncode == 0, r.stderr
    for j in range(1, 5):
        lines = (tmp_path / "log" / f"echo.{j}.log").read_text().splitlines()
        assert lines[0] == f"# echo 'job {j} of 4' | tr a-z A-Z"
        assert lines[1].startswith("# Started at")
        assert f"JOB {j} OF 4" in lines
        assert lines[-1].startswith("# Ended (code 0) at")
        assert lines[-2].startswith("# Accounting: time=")


def test_run_pl_failing_job(tmp_path):
    r = run_pl(tmp_path, "JOB=1:3", "log/f.JOB.log", "bash", "-c", "[ JOB -ne 2 ] || exit 3")
    assert r.returncode == 1
    assert "1 / 3 failed, log is in log/f.*.log" in r.stderr
    assert (tmp_path / "log" / "f.2.log").read_text().splitlines()[-1].startswith("# Ended (code 3)")
    assert (tmp_path / "log" / "f.1.log").read_text().splitlines()[-1].startswith("# Ended (code 0)")


def test_run_pl_single_job_and_pipefail(tmp_path):
    r = run_pl(tmp_path, "log/one.log", "false", "|", "cat")
    assert r.returncode == 1 and "job failed, log is in log/one.log" in r.stderr


def test_run_pl_usage_errors(tmp_path):
    r = run_pl(tmp_path, "JOB=1:2", "log/no-var.log", "true")
    assert r.returncode == 1 and "must contain JOB" in r.stderr
    r = run_pl(tmp_path, "--bogus", "1", "log/x.log", "true")
    assert r.returncode == 1 and "unknown option --bogus" in r.stderr


def test_job_arg_parsing():
    spec = parse_job_args(["--mem", "4G", "--num-threads=2", "SPLIT=3:5", "log/a.SPLIT.log", "prog", "SPLIT"])
    assert (spec.var, spec.start, spec.end, spec.options) == ("SPLIT", 3, 5, {"mem": "4G", "num-threads": "2"})
    assert spec.substitute(spec.command, 4) == "prog 4"
    with pytest.raises(JobArgsError, match="end < start"):
        parse_job_args(["JOB=3:1", "l.JOB.log", "x"])


def test_sbatch_and_qsub_command_lines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = parse_job_args(["--mem", "8G", "--gpu", "1", "--num-threads", "4", "--max-jobs-run", "10",
                           "JOB=1:16", "exp/log/extract.JOB.log", "python", "x.py", "--part", "JOB"])
    script = write_job_script(spec, "SLURM_ARRAY_TASK_ID")
    assert sbatch_command(spec, script) == [
        "sbatch", "--ntasks=1", "--parsable", "--job-name=extract", "--array=1-16%10",
        "--output=exp/log/q/extract.%a.out", "--mem=8G", "--cpus-per-task=4",
        "--gres=gpu:1", str(script)]
    assert qsub_command(spec, script) == [
        "qsub", "-v", "PATH", "-cwd", "-S", "/bin/bash", "-j", "y", "-N", "extract",
        "-o", "exp/log/q/extract.$TASK_ID.out", "-t", "1:16", "-tc", "10",
        "-l", "mem_free=8G,ram_free=8G", "-pe", "smp", "4", "-l", "gpu=1", str(script)]


def test_cluster_job_script_runs_like_run_pl(tmp_path, monkeypatch):
    """The generated array-job script, run as the scheduler would, writes the log and done-file."""
    monkeypatch.chdir(tmp_path)
    spec = parse_job_args(["JOB=1:2", "log/s.JOB.log", "echo", "part JOB", "|", "cat"])
    script = write_job_script(spec, "SLURM_ARRAY_TASK_ID")
    r = subprocess.run(["bash", str(script)], env={**bash_env(), "SLURM_ARRAY_TASK_ID": "2"})
    assert r.returncode == 0
    log = (tmp_path / "log" / "s.2.log").read_text().splitlines()
    assert log[0] == "# echo 'part 2' | cat" and "part 2" in log
    assert (tmp_path / "log" / "q" / "done.s.2").read_text().strip() == "0"


def test_slurm_pl_with_fake_scheduler(tmp_path):
    """slurm.pl end to end with a fake `sbatch` that runs the array locally."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sbatch").write_text(
        "#!/bin/bash\nfor a in \"$@\"; do case $a in --array=*) r=${a#--array=}; r=${r%%%*};; esac; done\n"
        "script=${@: -1}\nfor i in $(seq ${r%-*} ${r#*-}); do SLURM_ARRAY_TASK_ID=$i bash $script; done\n"
        "echo 12345\n")
    (bindir / "sbatch").chmod(0o755)
    env = bash_env()
    env["PATH"] = f"{bindir}:{env['PATH']}"
    r = subprocess.run([str(TEMPLATE / "utils" / "slurm.pl"), "JOB=1:3", "log/t.JOB.log",
                        "bash", "-c", "exit $((JOB == 3))"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 1 and "1 / 3 failed" in r.stderr
    assert Path(tmp_path / "log" / "t.1.log").read_text().splitlines()[-1].startswith("# Ended (code 0)")


# Kaldi's own conf/slurm.conf (egs/wsj/s5/conf/slurm.conf style): partition per GPU count, memory per CPU
KALDI_SLURM_CONF = """\
command sbatch --export=PATH  --ntasks-per-node=1
option time=* --time $0
option mem=* --mem-per-cpu $0
option mem=0          # Do not add anything to qsub_opts
option num_threads=* --cpus-per-task $0
option num_threads=1 --cpus-per-task 1
default gpu=0
option gpu=0 -p shared
option gpu=* -p gpu --gres=gpu:$0 --time 4:0:0  # this has to be figured out
"""


def test_kaldi_config_file_turns_options_into_flags(tmp_path, monkeypatch):
    """conf/slurm.conf in the working directory is used as Kaldi's slurm.pl uses it: exact values
    first, then `*` with $0 replaced, defaults for options not given; --config names another file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "slurm.conf").write_text(KALDI_SLURM_CONF)
    spec = parse_job_args(["--mem", "2G", "--num-threads", "1", "JOB=1:2", "log/a.JOB.log", "true"])
    cmd = sbatch_command(spec, Path("job.sh"))
    assert cmd == ["sbatch", "--export=PATH", "--ntasks-per-node=1", "--parsable", "--job-name=a", "--array=1-2",
                   "--output=log/q/a.%a.out", "--mem-per-cpu", "2G", "--cpus-per-task", "1", "-p", "shared", "job.sh"]
    spec = parse_job_args(["--gpu", "2", "--mem", "0", "log/b.log", "true"])
    assert sbatch_command(spec, Path("job.sh"))[-6:] == ["-p", "gpu", "--gres=gpu:2", "--time", "4:0:0", "job.sh"]
    assert "--mem-per-cpu" not in sbatch_command(spec, Path("job.sh"))
    # --config names a file; it wins over conf/slurm.conf (here: an SGE-style file for queue.pl)
    (tmp_path / "my.conf").write_text("command qsub -V\noption mem=* -l h_vmem=$0\n")
    spec = parse_job_args(["--config", "my.conf", "--mem", "3G", "log/c.log", "true"])
    assert qsub_command(spec, Path("job.sh")) == ["qsub", "-V", "-N", "c", "-o", "log/q/c.$TASK_ID.out", "-t", "1:1",
                                                  "-l", "h_vmem=3G", "job.sh"]
    assert load_scheduler_config("sge").source == "the built-in queue.pl configuration"  # no conf/queue.conf here


def fake_sbatch_env(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sbatch").write_text(
        "#!/bin/bash\necho \"$@\" > sbatch.args\n"
        "for a in \"$@\"; do case $a in --array=*) r=${a#--array=}; r=${r%%%*};; esac; done\n"
        "script=${@: -1}\nfor i in $(seq ${r%-*} ${r#*-}); do SLURM_ARRAY_TASK_ID=$i bash $script; done\n"
        "echo 12345\n")
    (bindir / "sbatch").chmod(0o755)
    env = bash_env()
    env["PATH"] = f"{bindir}:{env['PATH']}"
    return env


def test_slurm_pl_honours_and_refuses_by_config(tmp_path):
    """A Kaldi user's `slurm.pl --config conf/x.conf` reaches sbatch; an option the file does not
    describe, a missing file and an unreadable line are refused in one line before anything is
    submitted or written; run.pl accepts --config and ignores it, as Kaldi's run.pl does."""
    env = fake_sbatch_env(tmp_path)
    (tmp_path / "x.conf").write_text("command sbatch --qos=low\noption mem=* --mem-per-cpu=$0\n")
    slurm_pl = str(TEMPLATE / "utils" / "slurm.pl")
    r = subprocess.run([slurm_pl, "--config", "x.conf", "--mem", "1G", "JOB=1:2", "log/t.JOB.log", "echo", "JOB"],
                       capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    args = (tmp_path / "sbatch.args").read_text().split()
    assert args[:2] == ["--qos=low", "--parsable"] and "--mem-per-cpu=1G" in args
    assert (tmp_path / "log" / "t.2.log").read_text().splitlines()[2:4] == ["#", "2"]
    for argv, message in [
        (["--config", "x.conf", "--gpu", "1"],
         "slurm.pl: --gpu is not described in x.conf (add a line 'option gpu=* <flags with $0>')"),
        (["--config", "nope.conf"], "slurm.pl: --config nope.conf: cannot read it (No such file or directory)"),
    ]:
        r = subprocess.run([slurm_pl, *argv, "JOB=1:2", "log2/t.JOB.log", "true"], capture_output=True, text=True,
                           cwd=tmp_path, env=env)
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "log2").exists()  # nothing submitted, no job script written
    (tmp_path / "bad.conf").write_text("command sbatch\noptoin mem=* --mem=$0\n")
    r = subprocess.run([slurm_pl, "--config", "bad.conf", "log3/t.log", "true"], capture_output=True, text=True,
                       cwd=tmp_path, env=env)
    assert r.returncode == 1 and "bad.conf:2: cannot read 'optoin mem=* --mem=$0'" in r.stderr
    r = run_pl(tmp_path, "--config", "x.conf", "--mem", "9G", "log4/t.log", "echo", "ok")
    assert r.returncode == 0 and "ok" in (tmp_path / "log4" / "t.log").read_text()
