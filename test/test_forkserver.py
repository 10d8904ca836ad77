"""test/forkserver.py, which runs the suite's `python -m` calls: a forked call must answer as a fresh
interpreter does (exit status, stdout, stderr with its traceback), in the call's directory and
environment, and leave nothing behind for the next call. Every fault test's "no traceback" rests on
the second point."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
import time

import pytest

import forkserver


def module(tmp_path, name, body):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    return name


def both(tmp_path, name, *args, env=None):
    """(forked, fresh) answers of python -m name args, run in tmp_path."""
    forked = forkserver.run(name, *args, cwd=tmp_path, env=env)
    fresh = subprocess.run([sys.executable, "-m", name, *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    return forked, fresh


def test_uncaught_exception_gives_the_traceback_and_exit_1(tmp_path):
    name = module(tmp_path, "boom", """
        def inner():
            raise ValueError("bad value 42")
        print("before", end="")
        inner()
    """)
    forked, fresh = both(tmp_path, name)
    assert forked.returncode == fresh.returncode == 1
    assert forked.stdout == fresh.stdout == "before"
    assert "Traceback (most recent call last)" in forked.stderr and "ValueError: bad value 42" in forked.stderr
    assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1]


@pytest.mark.parametrize("exit_arg, code", [("3", 3), ("None", 0), ("'stopped: no input'", 1), ("256 + 7", 7)])
def test_exit_status_and_message_as_an_interpreter_gives_them(tmp_path, exit_arg, code):
    name = module(tmp_path, "leave", f"""
        import atexit, sys
        atexit.register(lambda: print("atexit ran"))
        sys.stdout.write("unflushed")
        sys.exit({exit_arg})
    """)
    forked, fresh = both(tmp_path, name)
    assert forked.returncode == fresh.returncode == code
    assert forked.stdout == fresh.stdout == "unflushedatexit ran\n"
    assert forked.stderr == fresh.stderr


def test_directory_environment_argv_and_threads_are_the_calls(tmp_path):
    name = module(tmp_path, "where", """
        import os, sys, torch
        print(os.getcwd(), os.environ.get("UPMP_PROBE"), sys.argv[1:], os.path.basename(sys.argv[0]),
              sys.path[0] == os.getcwd(), torch.get_num_threads(), __name__)
    """)
    for threads in ("1", "2"):
        env = dict(forkserver.os.environ, UPMP_PROBE=f"probe{threads}", OMP_NUM_THREADS=threads)
        forked, fresh = both(tmp_path, name, "a b", "c", env=env)
        assert forked.returncode == fresh.returncode == 0, forked.stderr
        assert forked.stdout == fresh.stdout == f"{tmp_path} probe{threads} ['a b', 'c'] where.py True {threads} __main__\n"


def test_nothing_leaks_into_the_next_call(tmp_path):
    module(tmp_path, "change", """
        import logging, os, torch, numpy
        torch.set_num_threads(1)
        logging.basicConfig(level=logging.DEBUG)
        numpy.LEAKED = True
        os.environ["LEAKED"] = "1"
    """)
    module(tmp_path, "look", """
        import logging, os, numpy
        print(hasattr(numpy, "LEAKED"), "LEAKED" in os.environ, len(logging.getLogger().handlers))
    """)
    assert forkserver.run("change", cwd=tmp_path).returncode == 0
    forked, fresh = both(tmp_path, "look")
    assert forked.stdout == fresh.stdout == "False False 0\n"


def test_start_up_variables_are_the_calls(tmp_path):
    """PYTHONHASHSEED is read when an interpreter starts: a call with it is served by a server
    started with it."""
    name = module(tmp_path, "hashes", "print(hash('speaker'))\n")
    seeded = dict(forkserver.os.environ, PYTHONHASHSEED="123")
    forked, fresh = both(tmp_path, name, env=seeded)
    assert forked.stdout == fresh.stdout
    assert forkserver.run(name, cwd=tmp_path).stdout != fresh.stdout  # without the seed, another hash


# --- recipes: the python shim (forkserver.recipe_env) -------------------------------------------------

def shim_calls(tmp_path, script, route=True, **popen):
    """bash -c script in tmp_path with the recipe shim on the PATH (probe_* modules routed when route)."""
    root = Path(forkserver.__file__).resolve().parent.parent  # the probe modules are found in the cwd
    env = forkserver.recipe_env(dict(os.environ, PYTHONPATH=str(root)))
    env["UPMP_TEST_SHIM_ROUTE"] = "probe_" if route else ""
    return subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def test_recipe_calls_through_the_shim_answer_as_a_fresh_interpreter(tmp_path):
    module(tmp_path, "probe_echo", """
        import os, sys
        line = sys.stdin.readline().strip()
        parent = open(f"/proc/{os.getppid()}/cmdline").read().replace(chr(0), " ")
        print(f"read {line!r} args {sys.argv[1:]} cwd {os.getcwd()} served {'--listen' in parent}")
        print("to stderr", file=sys.stderr)
        if sys.argv[1:] == ["fail"]:
            raise RuntimeError("the call failed")
        sys.exit(int(sys.argv[1]))
    """)
    script = 'out=$(echo hello | python3 -m probe_echo "$@"); rc=$?; echo "$out"; echo "rc=$rc"'
    answers = {}
    for route in (True, False):
        for args in (["3"], ["fail"]):
            p = shim_calls(tmp_path, script.replace('"$@"', " ".join(args)), route=route)
            out, err = p.communicate(timeout=60)
            answers[route, args[0]] = (out.replace(f"served {route}", "served"), err)
            assert f"served {route}" in out  # the forked call's parent is the server; the other is a fresh python
    assert answers[True, "3"] == answers[False, "3"]
    assert answers[True, "3"][0] == f"read 'hello' args ['3'] cwd {tmp_path} served\nrc=3\n"
    forked, fresh = answers[True, "fail"], answers[False, "fail"]
    assert forked[0] == fresh[0] and forked[0].endswith("rc=1\n")
    assert "Traceback (most recent call last)" in forked[1] and forked[1].splitlines()[-1] == fresh[1].splitlines()[-1]


def test_a_signal_reaches_the_call_and_the_call_dies_with_the_shim(tmp_path):
    module(tmp_path, "probe_wait", """
        import os, signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: (print("terminated", flush=True), sys.exit(5)))
        open(sys.argv[1], "w").write(str(os.getpid()))
        time.sleep(60)
    """)
    module(tmp_path, "probe_self_kill", """
        import os, signal
        os.kill(os.getpid(), signal.SIGTERM)
    """)
    for route in (True, False):  # killed by a signal: the status a fresh interpreter gives
        p = shim_calls(tmp_path, "exec python3 -m probe_self_kill", route=route)
        p.communicate(timeout=60)
        assert p.returncode == -signal.SIGTERM
    for sig, code, out in ((signal.SIGTERM, 5, "terminated\n"), (signal.SIGKILL, -signal.SIGKILL, "")):
        pid_file = tmp_path / f"pid.{sig}"
        p = shim_calls(tmp_path, f"exec python3 -m probe_wait {pid_file}")  # the shim is the process bash was
        deadline = time.time() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.time() < deadline and p.poll() is None, p.communicate()
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert child != p.pid
        os.kill(p.pid, sig)
        assert p.communicate(timeout=30)[0] == out and p.returncode == code
        deadline = time.time() + 10
        while os.path.exists(f"/proc/{child}") and open(f"/proc/{child}/stat").read().split()[2] != "Z":
            assert time.time() < deadline, f"the call {child} outlived its shim"
            time.sleep(0.05)


STUCK = """
    import threading, time
    def waiting_forever():
        threading.Event().wait()
    threading.Thread(target=waiting_forever, daemon=True).start()
    time.sleep(120)
"""


def test_a_call_past_its_limit_prints_its_stacks_and_is_killed(tmp_path):
    name = module(tmp_path, "stuck", STUCK)
    start = time.monotonic()
    answer = forkserver.run(name, cwd=tmp_path, env=dict(os.environ, UPMP_TEST_CALL_LIMIT_S="1"))
    assert time.monotonic() - start < 30  # 1 s, then 5 s between the stacks and the kill
    assert answer.returncode == -signal.SIGKILL
    assert f'File "{tmp_path}/stuck.py", line 6 in <module>' in answer.stderr  # the main thread
    assert "line 4 in waiting_forever" in answer.stderr  # and the other one


def test_a_recipe_call_past_its_limit_prints_its_stacks_and_is_killed(tmp_path):
    module(tmp_path, "probe_stuck", STUCK)
    start = time.monotonic()
    p = shim_calls(tmp_path, "UPMP_TEST_CALL_LIMIT_S=1 exec python3 -m probe_stuck")
    _, err = p.communicate(timeout=60)
    assert time.monotonic() - start < 30
    assert p.returncode == -signal.SIGKILL, err
    assert f'File "{tmp_path}/probe_stuck.py", line 6 in <module>' in err and "line 4 in waiting_forever" in err
