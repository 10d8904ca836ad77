"""`python -m <module> <args>` for the tests, in a process forked from a warm interpreter.

A fresh interpreter spends about 3 s of CPU importing torch before an entry point reads its first
argument; the suite starts a few hundred of them, mostly to see one error line. Each test process
(pytest-xdist worker) therefore keeps one server: a Python started with the test's environment that
imports torch and the package's dependencies, starts no thread, and forks a child per call. The
child is a process of its own, as `python -m` is: it takes the call's working directory and
environment, its stdin is /dev/null and its stdout / stderr go to files the caller reads, it runs
the module as `__main__` (runpy, as `-m` does), and it ends with the exit status an interpreter
would give (SystemExit's code, 1 and the traceback on an uncaught exception), after the atexit
handlers and the flush of its streams. What the child changes (logging, torch's threads, globals)
dies with it, so calls cannot leak into each other or into the test.

Variables an interpreter or its libraries read when they start (PYTHON*, OMP_* other than
OMP_NUM_THREADS, MKL_*, KMP_*, GOMP_*, TORCH*, LD_*) cannot change in a fork: calls are served by
a server started with the same values (one per set of values; the suite uses two or three).
OMP_NUM_THREADS is applied in the child with torch.set_num_threads. A fresh interpreter runs the
call instead with `fresh=True` (a test about start-up itself: what an entry point imports) and for
every call when the test's environment has UPMP_TEST_FORK=0.

Recipes (bash calling `python3 -m upmp.bin.*`, directly or through the job launcher) reach the same
warm interpreter through `recipe_env`: it puts a `python3` / `python` shim first on the PATH. The
shim, a Python without site-packages or torch, passes its own stdin, stdout and stderr, argv, cwd and
environment over a Unix socket; the server forks a child that becomes the call, and answers with
its exit status (a signal as a signal). The shim forwards SIGTERM, SIGINT and SIGHUP to the child
and the child dies with the shim (killed by a signal included). Everything else runs the real
interpreter: other modules and `-c` (torchrun, scripts), a start-up environment other than the
server's, and jobs under Slurm (the scheduler's accounting and kills see the real process).
"""
from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional, Sequence

# Imported by the server before it serves: what most entry points load (not upmp.bin.*: runpy
# runs those as __main__ and warns when they are already imported).
# Measured on test/recipes/test_mini.py (231 calls): S3PRL's upstream code (with torchaudio and sympy,
# ~1 s) came in 30 calls, scipy.stats / scipy.optimize (~1 s) in 21, matplotlib (~1 s) in 17, sklearn
# in 10. S3PRL's hub stays the package's lazy one (upmp.upstream.s3prl_hub.install, as the package does).
PRELOAD = ("numpy", "scipy.special", "scipy.linalg", "scipy.stats", "scipy.optimize", "yaml", "soundfile",
           "kaldiio", "tqdm", "torch", "torch.nn.functional", "sympy", "torchaudio", "matplotlib.pyplot",
           "sklearn.linear_model", "sklearn.discriminant_analysis", "upmp.checkpoint", "upmp.bin.common",
           "upmp.data.kaldi_dir", "upmp.data.layer_stacks", "upmp.embeddings", "upmp.scoring.stage",
           "upmp.train.trainer", "s3prl.nn", "s3prl.upstream.wavlm.WavLM",
           "s3prl.upstream.hubert.hubert_model", "s3prl.upstream.wav2vec2.wav2vec2_model")
# Variables read at import time: a child whose value differs needs a server started with it. HOME,
# XDG_* and MPL* too: preloaded modules keep paths under them (S3PRL's download cache, matplotlib's
# config and backend); SKLEARN_* (sklearn's global config).
START_UP = ("PYTHON", "OMP_", "MKL_", "KMP_", "GOMP_", "TORCH", "LD_", "HOME", "XDG_", "MPL", "SKLEARN_")
# start-up variables a recipe server's child applies itself (path.sh sets the two Python ones)
APPLIED = ("OMP_NUM_THREADS", "PYTHONPATH", "PYTHONUNBUFFERED")


# A forked call running longer than this (UPMP_TEST_CALL_LIMIT_S in the call's environment overrides
# it) is sent SIGUSR2, on which it prints the stack of each of its threads to its stderr (faulthandler),
# and is killed 5 s later (by the server for run(), by the shim for a recipe's call): the test sees the
# stacks and a call killed by SIGKILL instead of a suite that never ends. A whole test has
# pytest-timeout's limit (pytest.ini).
CALL_LIMIT_S = 600
STACKS_SIGNAL = signal.SIGUSR2


def _call_limit(env: dict) -> float:
    return float(env.get("UPMP_TEST_CALL_LIMIT_S") or CALL_LIMIT_S)


def _start_up_env(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith(START_UP) and k != "OMP_NUM_THREADS"}


class _Server:
    """One warm interpreter serving fork requests over a pipe, one request at a time."""

    def __init__(self, env: dict):
        self.env = dict(env)
        self.lock = threading.Lock()
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=self.env, cwd="/")
        ready = self.proc.stdout.readline()
        if ready.strip() != b"ready":
            self.proc.kill()
            raise RuntimeError(f"test fork server did not start: {ready!r}")

    def call(self, module: str, args: Sequence[str], env: dict, cwd: str):
        with self.lock, tempfile.TemporaryDirectory(prefix="upmp-fork-") as tmp:
            out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
            request = {"module": module, "args": list(args), "env": env, "cwd": cwd, "stdout": out, "stderr": err}
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline()
            if not answer:
                raise RuntimeError(f"test fork server died (exit {self.proc.wait()})")
            code = json.loads(answer)["code"]
            return subprocess.CompletedProcess([sys.executable, "-m", module, *args], code, _read(out), _read(err))


def _read(path: str) -> str:
    return Path(path).read_text(errors="replace") if os.path.exists(path) else ""


_servers: dict = {}  # start-up environment -> its server (the suite uses two or three)


def run(module: str, *args, env: Optional[dict] = None, cwd=None, fresh: bool = False) -> subprocess.CompletedProcess:
    """`python -m module args` with text output captured, as subprocess.run(..., capture_output=True,
    text=True) returns it; forked from the warm server unless the call needs a fresh interpreter."""
    env = dict(os.environ if env is None else env)
    cwd = str(cwd or os.getcwd())
    args = [str(a) for a in args]
    if not fresh and os.environ.get("UPMP_TEST_FORK", "1") != "0" and os.path.isdir(cwd):
        key = tuple(sorted(_start_up_env(env).items()))
        server = _servers.get(key)
        if server is None or server.proc.poll() is not None:
            server = _servers[key] = _Server(env)
        return server.call(module, args, env, cwd)
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=cwd)


_listeners: dict = {}  # start-up environment -> (its server process, the shim directory)

SHIM = """#!{python} -S
# test/forkserver.py: python -m upmp.bin.* from the recipe server ({socket}); anything else: the real python
import os, sys
REAL, SOCK, START_UP = {python!r}, {socket!r}, {start_up!r}
args = sys.argv[1:]
SERVER_PATH = {server_path!r}
ROUTED = ("upmp.bin.", *filter(None, os.environ.get("UPMP_TEST_SHIM_ROUTE", "").split(",")))  # the latter: tests
if (len(args) < 2 or args[0] != "-m" or not args[1].startswith(ROUTED) or "SLURM_JOB_ID" in os.environ
        or {{k: v for k, v in os.environ.items() if k.startswith({prefixes!r}) and k not in {applied!r}}} != START_UP
        or not all(os.path.abspath(p) in SERVER_PATH for p in os.environ.get("PYTHONPATH", "").split(":") if p)
        or not os.path.exists(SOCK)):
    os.execv(REAL, [REAL, *args])
import json, signal, socket
conn = socket.socket(socket.AF_UNIX)
conn.connect(SOCK)
socket.send_fds(conn, [b"F"], [0, 1, 2])
conn.sendall(json.dumps({{"module": args[1], "args": args[2:], "env": dict(os.environ), "cwd": os.getcwd()}}).encode() + b"\\n")
answers = conn.makefile("rb")
child, forwarded = int(answers.readline()), []
def forward(sig, _frame):
    forwarded.append(sig)
    try:
        os.kill(child, sig)
    except ProcessLookupError:
        pass
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, forward)
def past_limit(_sig, _frame):  # test/forkserver.py, CALL_LIMIT_S: the call's stacks, then its end
    past.append(signal.SIGKILL if past else {stacks_signal})
    os.kill(child, past[-1])
    signal.alarm(5)
past = []
signal.signal(signal.SIGALRM, past_limit)
signal.alarm(max(1, round(float(os.environ.get("UPMP_TEST_CALL_LIMIT_S") or {call_limit}))))
line = answers.readline()
code = int(line) if line else -(forwarded[-1] if forwarded else signal.SIGKILL)
signal.alarm(0)
if code < 0:
    if -code != signal.SIGKILL:  # SIGKILL's action is the default already, and cannot be set
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def recipe_env(env: dict) -> dict:
    """env with the python shim first on its PATH, served by a warm server started with env's
    start-up variables (unchanged when the test's environment has UPMP_TEST_FORK=0)."""
    if os.environ.get("UPMP_TEST_FORK", "1") == "0":
        return env
    start_up = {k: v for k, v in _start_up_env(env).items() if k not in APPLIED}
    key = tuple(sorted(start_up.items()))
    entry = _listeners.get(key)
    if entry is None or entry[0].poll() is not None:
        shim_dir = tempfile.mkdtemp(prefix="upmp-shim-")  # 0700: only this user reaches the socket
        atexit.register(shutil.rmtree, shim_dir, True)
        socket_path = os.path.join(shim_dir, "server.sock")
        root = str(Path(__file__).resolve().parent.parent)  # path.sh puts the repository first on PYTHONPATH
        server_env = dict(env, LC_ALL="C", PYTHONPATH=os.pathsep.join(filter(None, (root, env.get("PYTHONPATH")))))
        proc = subprocess.Popen([sys.executable, __file__, "--listen", socket_path], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=server_env, cwd="/")
        ready = proc.stdout.readline().split(b" ", 1)
        if ready[0] != b"ready":
            proc.kill()
            raise RuntimeError(f"test recipe fork server did not start: {ready!r}")
        for name in ("python3", "python"):
            path = os.path.join(shim_dir, name)
            Path(path).write_text(SHIM.format(python=sys.executable, socket=socket_path, start_up=start_up,
                                              prefixes=START_UP, applied=APPLIED, server_path=json.loads(ready[1]),
                                              stacks_signal=int(STACKS_SIGNAL), call_limit=CALL_LIMIT_S))
            os.chmod(path, 0o755)
        entry = _listeners[key] = (proc, shim_dir)
    env = dict(env, PATH=entry[1] + os.pathsep + env.get("PATH", ""))
    if not env.get("VIRTUAL_ENV") and sys.prefix != sys.base_prefix:  # else path.sh's activation would
        env["VIRTUAL_ENV"] = sys.prefix                                 # put the venv before the shim
        env["PATH"] = entry[1] + os.pathsep + os.path.join(sys.prefix, "bin") + env["PATH"][len(entry[1]):]
    return env


# --- the server side --------------------------------------------------------------------------------

def _child(request: dict) -> None:
    """In the forked child: become `python -m module args` and never return."""
    import atexit
    import runpy
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        streams = ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY | os.O_CREAT),
                   (2, request["stderr"], os.O_WRONLY | os.O_CREAT))
        for fd, path, flags in streams if request["stdout"] is not None else ():  # a shim's call has its own
            target = os.open(path, flags, 0o644)
            os.dup2(target, fd)
            os.close(target)
        import faulthandler
        faulthandler.register(STACKS_SIGNAL, all_threads=True)  # sent at the call's limit (CALL_LIMIT_S)
        if "OMP_NUM_THREADS" in request["env"]:
            import torch
            torch.set_num_threads(max(1, int(request["env"]["OMP_NUM_THREADS"] or 1)))
        sys.path.insert(0, request["cwd"])  # what `python -m` puts first
        if request["env"].get("PYTHONUNBUFFERED"):
            for stream in (sys.stdout, sys.stderr):
                stream.reconfigure(write_through=True)
        sys.argv = [request["module"], *request["args"]]
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code & 0xFF
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:
            sys.excepthook(*sys.exc_info())
            code = 1
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _socket_child(conn) -> None:
    """In the forked child of the listener: take the shim's streams and request, then become the call."""
    import socket
    _, fds, _, _ = socket.recv_fds(conn, 1, 3)
    request = json.loads(conn.makefile("rb").readline())
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    conn.sendall(f"{os.getpid()}\n".encode())

    def die_with_the_shim():  # EOF: the shim is gone (exited or killed), so is this call
        conn.recv(1)
        os.kill(os.getpid(), 9)
    threading.Thread(target=die_with_the_shim, daemon=True).start()
    _child(dict(request, stdout=None, stderr=None))


def _preload() -> None:
    import importlib
    del sys.path[0]  # this file's directory: test/upmp would shadow the package
    import matplotlib
    matplotlib.use("Agg")  # before pyplot, as the package's plots do
    from upmp.upstream import s3prl_hub
    s3prl_hub.install()  # the package's lazy s3prl.hub, in place before s3prl.nn (as the package does)
    for name in PRELOAD:
        importlib.import_module(name)
    assert threading.active_count() == 1, threading.enumerate()  # a fork copies only this thread


def _listen(path: str) -> None:
    """Serve shim calls on a Unix socket until stdin closes: a child per call, answered with its exit status."""
    import selectors
    import socket
    null = os.open(os.devnull, os.O_RDWR)
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(null, 1)
    _preload()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(0, selectors.EVENT_READ)
    proto_out.write(b"ready " + json.dumps([os.path.abspath(p) for p in sys.path if p]).encode() + b"\n")
    proto_out.flush()
    calls = {}  # child pid -> its connection
    while True:
        for key, _ in selector.select(timeout=0.02):
            if key.fileobj == 0:  # the test process ended
                for conn in calls.values():
                    conn.close()
                return
            conn, _ = listener.accept()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                selector.close()
                listener.close()
                os.dup2(null, 0)
                _socket_child(conn)
            calls[pid] = conn
        while calls:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = calls.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                except OSError:
                    pass
                conn.close()


def _wait(pid: int, limit: float) -> int:
    """The exit code of child pid, asked for its stacks once past limit seconds and killed 5 s later."""
    with os.fdopen(os.pidfd_open(pid), "rb", buffering=0) as pidfd:
        for sig, wait in ((STACKS_SIGNAL, limit), (signal.SIGKILL, 5.0)):
            if select.select([pidfd], [], [], wait)[0]:
                break
            os.kill(pid, sig)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _serve() -> None:
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)  # nothing the imports print reaches the protocol pipe
    _preload()
    proto_out.write(b"ready\n")
    proto_out.flush()
    for line in proto_in:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            proto_in.close()
            proto_out.close()
            _child(request)
        code = _wait(pid, _call_limit(request["env"]))
        proto_out.write(json.dumps({"code": code}).encode() + b"\n")
        proto_out.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
elif __name__ == "__main__" and sys.argv[1:2] == ["--listen"]:
    _listen(sys.argv[2])
