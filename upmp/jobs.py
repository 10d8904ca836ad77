"""Parallel job wrappers with Kaldi's calling form: run.pl, queue.pl (SGE), slurm.pl.

    run.pl [--mem 4G] [--gpu N] [--num-threads K] [--max-jobs-run M] JOB=1:N dir/log/name.JOB.log program args ... JOB ...

Every occurrence of the job variable (any name, e.g. JOB) in the log file and
the command is replaced by 1..N; each job's output goes to its numbered log
file with Kaldi's header and footer; the wrapper exits 1 if any job failed.
Arguments without whitespace are passed to bash as they are (so `\\|` or `">"`
build pipelines), others are single-quoted, as Kaldi's run.pl does.

queue.pl and slurm.pl turn the resource options into scheduler flags through a Kaldi
configuration file, as Kaldi's own wrappers do: `--config <file>`, else `conf/queue.conf` /
`conf/slurm.conf` in the working directory when it exists, else the built-in one below
(DEFAULT_CONFIGS). Its lines:

    command sbatch --ntasks=1            the submit command and its fixed flags
    option mem=* --mem=$0                flags for --mem <value>: $0 is the value
    option gpu=0                         an exact value first: --gpu 0 adds nothing
    default gpu=0                        the value of an option not given on the command line

An option given on the command line that the file does not describe is an error (Kaldi does
the same), so a flag is never silently dropped. --max-jobs-run is the array's own throttle
(`--array=1-N%M`, `-tc M`) unless the file describes max_jobs_run. run.pl runs everything on
this machine and ignores the resource options and --config, as Kaldi's run.pl does.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from upmp.errors import JobArgsError  # noqa: F401  (re-exported)

USAGE = ("usage: {prog} [--config <conf>] [--mem <mem>] [--gpu <0|N>] [--num-threads <K>] [--max-jobs-run <M>] "
         "[JOB=1:N] <log-file> <command...>")

VALUE_OPTIONS = ("mem", "gpu", "num-threads", "max-jobs-run", "time", "partition", "queue", "config")


@dataclass
class JobSpec:
    log_file: str
    command: str
    var: Optional[str] = None
    start: int = 1
    end: int = 1
    options: Dict[str, str] = field(default_factory=dict)

    def job_ids(self) -> List[int]:
        return list(range(self.start, self.end + 1))

    def substitute(self, text: str, job_id: int) -> str:
        return text if self.var is None else text.replace(self.var, str(job_id))


def quote_command(args: List[str]) -> str:
    return " ".join(a if re.fullmatch(r"\S+", a) else shlex.quote(a) for a in args)


def parse_job_args(argv: List[str]) -> JobSpec:
    options: Dict[str, str] = {}
    argv = list(argv)
    while argv and argv[0].startswith("--"):
        name = argv.pop(0)[2:].replace("_", "-")
        if "=" in name:
            name, value = name.split("=", 1)
        else:
            if not argv:
                raise JobArgsError(f"option --{name} needs a value")
            value = argv.pop(0)
        if name not in VALUE_OPTIONS:
            raise JobArgsError(f"unknown option --{name}")
        options[name] = value
    spec_var, start, end = None, 1, 1
    if argv:
        m = re.fullmatch(r"([A-Za-z_]\w*)=(\d+)(?::(\d+))?", argv[0])
        if m:
            argv.pop(0)
            spec_var, start = m.group(1), int(m.group(2))
            end = int(m.group(3)) if m.group(3) else start
            if end < start:
                raise JobArgsError(f"invalid job range {m.group(0)}: end < start")
    if len(argv) < 2:
        raise JobArgsError("need a log file and a command")
    log_file, command = argv[0], quote_command(argv[1:])
    if spec_var is not None and end > start and spec_var not in log_file:
        raise JobArgsError(f"log file {log_file} must contain {spec_var} when running several jobs")
    return JobSpec(log_file, command, spec_var, start, end, options)


def _now() -> str:
    return time.strftime("%a %b %d %H:%M:%S %Z %Y")


def _header(command: str) -> str:
    return f"# {command}\n# Started at {_now()}\n#\n"


def _footer(code: int, elapsed: float, threads: int) -> str:
    return (f"# Accounting: time={int(elapsed)} threads={threads}\n"
            f"# Ended (code {code}) at {_now()}, elapsed time {int(elapsed)} seconds\n")


def run_local_job(spec: JobSpec, job_id: int) -> int:
    log = Path(spec.substitute(spec.log_file, job_id))
    log.parent.mkdir(parents=True, exist_ok=True)
    command = spec.substitute(spec.command, job_id)
    threads = int(spec.options.get("num-threads", 1))
    with open(log, "w") as f:
        f.write(_header(command))
        f.flush()
        t0 = time.time()
        code = subprocess.call(["bash", "-c", f"set -o pipefail; {command}"], stdout=f, stderr=subprocess.STDOUT)
        f.write(_footer(code, time.time() - t0, threads))
    return code


def run_local(spec: JobSpec) -> int:
    """Kaldi run.pl: jobs on this machine, at most --max-jobs-run (default: #CPUs) at a time."""
    max_jobs = int(spec.options.get("max-jobs-run", os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=max(1, max_jobs)) as pool:
        codes = list(pool.map(lambda j: run_local_job(spec, j), spec.job_ids()))
    return _report("run.pl", spec, codes)


def _report(prog: str, spec: JobSpec, codes: List[int]) -> int:
    """Exit status of the whole call; for failed jobs, the log and each one's last error line
    (so the console says what went wrong without opening the logs)."""
    failed = [j for j, c in zip(spec.job_ids(), codes) if c != 0]
    if not failed:
        return 0
    if len(codes) == 1:
        print(f"{prog}: job failed, log is in {spec.substitute(spec.log_file, failed[0])}", file=sys.stderr)
    else:
        pattern = spec.log_file.replace(spec.var or "JOB", "*")
        print(f"{prog}: {len(failed)} / {len(codes)} failed, log is in {pattern}", file=sys.stderr)
    for j in failed[:MAX_REPORTED_JOBS]:
        log = spec.substitute(spec.log_file, j)
        line = last_error_line(log)
        if line:
            print(f"{prog}: job {j} ({log}): {line}", file=sys.stderr)
    return 1


MAX_REPORTED_JOBS = 3  # failed jobs whose last error line is printed


def last_error_line(log: str) -> Optional[str]:
    """The last line of a job log that says 'error' (else its last output line), Kaldi's
    header and footer lines (`# ...`) skipped; None when the log is unreadable or empty."""
    try:
        lines = [ln.rstrip() for ln in Path(log).read_text(errors="replace").splitlines()]
    except OSError:
        return None
    lines = [ln for ln in lines if ln.strip() and not ln.startswith("# ")]
    for ln in reversed(lines):
        if "error" in ln.lower():
            return ln.strip()
    return lines[-1].strip() if lines else None


# --- cluster back-ends: a job script per call, an array job, done-files to wait on ---------------

def _queue_dir(spec: JobSpec) -> Path:
    return Path(spec.log_file).parent / "q"


def _job_name(spec: JobSpec) -> str:
    name = Path(spec.log_file).name.replace(f".{spec.var}", "") if spec.var else Path(spec.log_file).name
    return re.sub(r"\.log$", "", name)


def write_job_script(spec: JobSpec, task_id_var: str) -> Path:
    """A bash script that runs job $task_id_var with Kaldi's log header/footer and
    writes its exit code to q/done.<name>.<job>."""
    qdir = _queue_dir(spec)
    qdir.mkdir(parents=True, exist_ok=True)
    name = _job_name(spec)
    var = spec.var or "JOB"
    lines = [
        "#!/bin/bash",
        f"cd {shlex.quote(os.getcwd())}",
        f"export PATH={shlex.quote(os.environ.get('PATH', ''))}",
        f"{var}=${{{task_id_var}:-{spec.start}}}",
        f"log={_bash_sub(spec.log_file, spec.var)}",
        'mkdir -p "$(dirname "$log")"',
        f"cmd={_bash_sub(spec.command, spec.var)}",
        'echo "# $cmd" > "$log"; echo "# Started at $(date)" >> "$log"; echo "#" >> "$log"',
        "t0=$(date +%s)",
        '( set -o pipefail; eval "$cmd" ) >> "$log" 2>&1; ret=$?',
        "t1=$(date +%s)",
        f'echo "# Accounting: time=$((t1 - t0)) threads={spec.options.get("num-threads", "1")}" >> "$log"',
        'echo "# Ended (code $ret) at $(date), elapsed time $((t1 - t0)) seconds" >> "$log"',
        f'echo $ret > {shlex.quote(str(qdir))}/done.{name}.${{{var}}}',
        "exit $ret",
    ]
    script = qdir / f"{name}.sh"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return script


def _bash_sub(text: str, var: Optional[str]) -> str:
    """Quote text for bash so that the job variable expands and nothing else does."""
    if var is None:
        return shlex.quote(text)
    separator = '"${' + var + '}"'
    return separator.join(shlex.quote(p) for p in text.split(var))


# The configuration each wrapper uses when neither --config nor conf/<queue|slurm>.conf exists.
DEFAULT_CONFIGS = {
    "slurm": """\
command sbatch --ntasks=1
option mem=* --mem=$0
option num_threads=* --cpus-per-task=$0
default gpu=0
option gpu=0
option gpu=* --gres=gpu:$0
option time=* --time=$0
option partition=* --partition=$0
option queue=* --partition=$0
""",
    "sge": """\
command qsub -v PATH -cwd -S /bin/bash -j y
option mem=* -l mem_free=$0,ram_free=$0
option num_threads=* -pe smp $0
default gpu=0
option gpu=0
option gpu=* -l gpu=$0
option queue=* -q $0
option partition=* -q $0
option time=* -l h_rt=$0
""",
}
CONFIG_FILES = {"slurm": "conf/slurm.conf", "sge": "conf/queue.conf"}


@dataclass(frozen=True)
class SchedulerConfig:
    """A Kaldi queue.conf / slurm.conf: the submit command and each option's flags."""
    source: str
    command: List[str]
    options: Dict[str, Dict[str, str]]  # option (underscores) -> {exact value or "*": flag template}
    defaults: Dict[str, str]


def parse_scheduler_config(text: str, source: str) -> SchedulerConfig:
    """Parse Kaldi's configuration format (see the module docstring); `#` starts a comment."""
    command: List[str] = []
    options: Dict[str, Dict[str, str]] = {}
    defaults: Dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        keyword, _, rest = line.partition(" ")
        rest = rest.strip()
        if keyword == "command" and rest:
            command = shlex.split(rest)
            continue
        m = re.fullmatch(r"([A-Za-z_][\w-]*)=(\S+)(?:\s+(.*))?", rest)
        if keyword in ("option", "default") and m:
            name, value, flags = m.group(1).replace("-", "_"), m.group(2), (m.group(3) or "").strip()
            if keyword == "default":
                defaults[name] = value
            else:
                options.setdefault(name, {})[value] = flags
            continue
        raise JobArgsError(f"{source}:{n}: cannot read '{raw.strip()}': expected 'command <submit command>', "
                           "'option <name>=<value|*> [flags with $0]' or 'default <name>=<value>'")
    if not command:
        raise JobArgsError(f"{source}: no 'command' line (e.g. 'command sbatch --ntasks=1')")
    return SchedulerConfig(source, command, options, defaults)


def load_scheduler_config(backend: str, path: Optional[str] = None) -> SchedulerConfig:
    """--config <path>, else conf/<queue|slurm>.conf when it exists here, else DEFAULT_CONFIGS."""
    if path is None and Path(CONFIG_FILES[backend]).is_file():
        path = CONFIG_FILES[backend]
    if path is None:
        return parse_scheduler_config(DEFAULT_CONFIGS[backend], f"the built-in {PROGRAMS[backend]} configuration")
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise JobArgsError(f"--config {path}: cannot read it ({e.strerror}); give an existing Kaldi "
                           f"{Path(CONFIG_FILES[backend]).name} or leave --config out") from None
    return parse_scheduler_config(text, path)


def option_flags(config: SchedulerConfig, options: Dict[str, str]) -> List[str]:
    """The scheduler flags of the resource options, in the order the configuration lists them."""
    given = {k.replace("-", "_"): v for k, v in options.items() if k != "config"}
    if "max_jobs_run" not in config.options:
        given.pop("max_jobs_run", None)  # the array's own throttle (see array_flags)
    values = {**config.defaults, **given}
    for name in given:
        if name not in config.options:
            raise JobArgsError(f"--{name.replace('_', '-')} is not described in {config.source} "
                               f"(add a line 'option {name}=* <flags with $0>')")
    flags: List[str] = []
    for name, table in config.options.items():
        if name not in values:
            continue
        value = values[name]
        template = table.get(value, table.get("*"))
        if template is None:
            raise JobArgsError(f"--{name.replace('_', '-')} {value} is not described in {config.source} "
                               f"(add a line 'option {name}={value} <flags>' or 'option {name}=* <flags with $0>')")
        flags += shlex.split(template.replace("$0", value))
    return flags


def sbatch_command(spec: JobSpec, script: Path, config: Optional[SchedulerConfig] = None) -> List[str]:
    config = config or load_scheduler_config("slurm", spec.options.get("config"))
    qdir, name = _queue_dir(spec), _job_name(spec)
    array = f"{spec.start}-{spec.end}"
    if "max-jobs-run" in spec.options and "max_jobs_run" not in config.options:
        array += f"%{spec.options['max-jobs-run']}"
    return (config.command + ["--parsable", f"--job-name={name}", f"--array={array}", f"--output={qdir}/{name}.%a.out"]
            + option_flags(config, spec.options) + [str(script)])


def qsub_command(spec: JobSpec, script: Path, config: Optional[SchedulerConfig] = None) -> List[str]:
    config = config or load_scheduler_config("sge", spec.options.get("config"))
    qdir, name = _queue_dir(spec), _job_name(spec)
    cmd = config.command + ["-N", name, "-o", f"{qdir}/{name}.$TASK_ID.out", "-t", f"{spec.start}:{spec.end}"]
    if "max-jobs-run" in spec.options and "max_jobs_run" not in config.options:
        cmd += ["-tc", spec.options["max-jobs-run"]]
    return cmd + option_flags(config, spec.options) + [str(script)]


def run_cluster(spec: JobSpec, backend: str, poll_seconds: float = 5.0) -> int:
    prog = "slurm.pl" if backend == "slurm" else "queue.pl"
    task_var = "SLURM_ARRAY_TASK_ID" if backend == "slurm" else "SGE_TASK_ID"
    config = load_scheduler_config(backend, spec.options.get("config"))
    option_flags(config, spec.options)  # an option the configuration does not describe: refused before any write
    script = write_job_script(spec, task_var)
    qdir, name = _queue_dir(spec), _job_name(spec)
    for j in spec.job_ids():
        done = qdir / f"done.{name}.{j}"
        if done.exists():
            done.unlink()
    cmd = (sbatch_command if backend == "slurm" else qsub_command)(spec, script, config)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        print(f"{prog}: submission failed: {' '.join(cmd)}: {proc.stderr.strip()}", file=sys.stderr)
        return 1
    job_id = proc.stdout.strip().split(";")[0].split()[-1] if proc.stdout.strip() else ""
    codes: Dict[int, int] = {}
    gone_since, wait = None, 0.5  # short jobs are seen soon; then the poll slows to poll_seconds
    while len(codes) < len(spec.job_ids()):
        for j in spec.job_ids():
            done = qdir / f"done.{name}.{j}"
            if j not in codes and done.exists():
                text = done.read_text().strip()
                codes[j] = int(text) if text.lstrip("-").isdigit() else 1
        if len(codes) == len(spec.job_ids()):
            break
        # A job killed by the scheduler never writes its done-file: once the
        # scheduler no longer knows the job, give the done-files two full polls to appear
        # (a shared file system may show them late), then fail it.
        gone = job_id and not _job_alive(backend, job_id)
        gone_since = (gone_since or time.time()) if gone else None
        if gone_since is not None and time.time() - gone_since >= 2 * poll_seconds:
            for j in spec.job_ids():
                if j not in codes:
                    # the scheduler's reason (cancelled, time or memory limit) is in its own output file
                    print(f"{prog}: job {j} ended without an exit status (killed by the scheduler?), "
                          f"see {qdir}/{name}.{j}.out", file=sys.stderr)
                    codes[j] = 1
            break
        time.sleep(wait)
        wait = min(2 * wait, poll_seconds)
    return _report(prog, spec, [codes[j] for j in spec.job_ids()])


def _job_alive(backend: str, job_id: str) -> bool:
    cmd = ["squeue", "-h", "-j", job_id] if backend == "slurm" else ["qstat", "-j", job_id]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except FileNotFoundError:
        return True  # cannot ask; keep waiting for done-files
    return proc.returncode == 0 and (backend == "sge" or bool(proc.stdout.strip()))


PROGRAMS = {"local": "run.pl", "slurm": "slurm.pl", "sge": "queue.pl"}


def run_jobs(backend: str, argv: List[str]) -> int:
    """Run a Kaldi-form job command line (`[options] JOB=1:N log command...`) on a back-end
    (local, sge or slurm); returns the exit status (1 when any job failed). A malformed
    command line raises JobArgsError naming the wrapper and its usage."""
    prog = PROGRAMS[backend]
    try:
        spec = parse_job_args(argv)
    except JobArgsError as e:
        raise JobArgsError(f"{prog}: {e}; {USAGE.format(prog=prog)}") from None
    if backend == "local":
        return run_local(spec)
    try:
        return run_cluster(spec, backend)
    except JobArgsError as e:  # the scheduler configuration refused an option
        raise JobArgsError(f"{prog}: {e}") from None
