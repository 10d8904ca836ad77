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
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional, Sequence

# Imported by the server before it serves: what most entry points load (not upmp.bin.*: runpy
# runs those as __main__ and warns when they are already imported).
PRELOAD = ("numpy", "scipy.special", "scipy.linalg", "yaml", "soundfile", "kaldiio", "tqdm", "torch",
           "torch.nn.functional", "upmp.checkpoint", "upmp.bin.common", "upmp.data.kaldi_dir",
           "upmp.data.layer_stacks", "upmp.embeddings", "upmp.scoring.stage", "upmp.train.trainer")
START_UP = ("PYTHON", "OMP_", "MKL_", "KMP_", "GOMP_", "TORCH", "LD_")


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
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY | os.O_CREAT),
                                (2, request["stderr"], os.O_WRONLY | os.O_CREAT)):
            target = os.open(path, flags, 0o644)
            os.dup2(target, fd)
            os.close(target)
        if "OMP_NUM_THREADS" in request["env"]:
            import torch
            torch.set_num_threads(max(1, int(request["env"]["OMP_NUM_THREADS"] or 1)))
        sys.path.insert(0, request["cwd"])  # what `python -m` puts first
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


def _serve() -> None:
    import importlib
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)  # nothing the imports print reaches the protocol pipe
    del sys.path[0]  # this file's directory: test/upmp would shadow the package
    for name in PRELOAD:
        importlib.import_module(name)
    assert threading.active_count() == 1, threading.enumerate()  # a fork copies only this thread
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
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        proto_out.write(json.dumps({"code": code}).encode() + b"\n")
        proto_out.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
