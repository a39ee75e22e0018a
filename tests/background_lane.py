"""A second lane for the suite's long subprocess tests, so that they use CI's second core.

Some tests only start a script and read what it printed (``python -m benchmarks --smoke``,
the example scripts). Run in line, the pytest process waits on each of them with one of
CI's two cores idle. Instead, a module names such a command in ``BACKGROUND_JOBS`` and
marks the tests that read it with ``@pytest.mark.background("<job>")``; ``conftest.py``
moves those tests to the end of the run and, as soon as collection is done, starts this
file as a supervisor process that runs the jobs one after another while the rest of the
suite runs. A test then calls ``background.result("<job>")``: it waits for that job and
gets its exit status and output, as from ``subprocess.run``. A failure reads the same as
in line: the test asserts on the job's return code and shows its output.

No process is left behind: the supervisor and each job run in their own process group;
the session's end (also on Ctrl-C or ``-x``) kills whatever still runs; the supervisor
kills its job, removes its directory and exits when the pytest process dies; a job past
its timeout is killed.

The jobs get a Numba cache directory of their own (``numba_cache_dir``), never the one
the pytest process compiles into. Numba's cache is not safe for two processes that compile
*different* signatures of one function at once: each reads the index, picks the first free
data-file number and writes it back, so both can take ``.1.nbc`` and the index of one then
names the other's machine code (called with the wrong argument types: a crash). Jobs run
one after another, so the lane's own directory has one writer; it lives under minigrad's
cache (fresh on CI, kept between runs on a workstation), one per checkout.

Run as ``python tests/background_lane.py SPEC.json OUT_DIR PARENT_PID`` (by ``Lane``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

POLL_S = 0.2


def _write_atomically(path, text):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _kill_group(proc):
    _kill_pid_group(proc.pid)
    proc.wait()


def run_job(job, out_dir, parent_pid):
    """Run one job to its end, its timeout or the parent's death; ``(status, wall_s)``,
    status an exit code, ``"timeout"`` or ``"orphaned"``."""
    name = job["name"]
    start = time.perf_counter()
    with open(os.path.join(out_dir, f"{name}.stdout"), "w") as out, \
            open(os.path.join(out_dir, f"{name}.stderr"), "w") as err:
        proc = subprocess.Popen(job["argv"], cwd=job["cwd"], env=job["env"], stdout=out,
                                stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        _write_atomically(os.path.join(out_dir, f"{name}.pid"), str(proc.pid))
        while proc.poll() is None:
            if os.getppid() != parent_pid:
                _kill_group(proc)
                return "orphaned", time.perf_counter() - start
            if time.perf_counter() - start > job["timeout"]:
                _kill_group(proc)
                return "timeout", time.perf_counter() - start
            time.sleep(POLL_S)
    return proc.returncode, time.perf_counter() - start


def main(spec_path, out_dir, parent_pid):
    with open(spec_path) as f:
        jobs = json.load(f)
    for job in jobs:
        status, wall_s = run_job(job, out_dir, parent_pid)
        if status == "orphaned":  # nobody will read the results: leave nothing behind
            shutil.rmtree(out_dir, ignore_errors=True)
            return
        _write_atomically(os.path.join(out_dir, f"{job['name']}.status"),
                          json.dumps({"status": status, "wall_s": wall_s}))


def numba_cache_dir():
    """The lane's Numba cache (see the module docstring), or None without minigrad's Numba
    backend (nothing is compiled then)."""
    try:
        from minigrad.backends.numba_fused import cache_dir
    except ImportError:
        return None
    checkout = hashlib.sha1(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))).encode()).hexdigest()[:12]
    return os.path.join(os.path.dirname(cache_dir()), "numba-background", checkout)


class Result:
    """What ``subprocess.run(..., capture_output=True, text=True)`` would have returned,
    plus the job's wall time (seconds, from its start in the lane)."""

    def __init__(self, name, returncode, stdout, stderr, wall_s):
        self.name, self.returncode, self.stdout, self.stderr = name, returncode, stdout, stderr
        self.wall_s = wall_s


class Lane:
    """The pytest side: ``start`` the supervisor, ``result`` waits for a job, ``close``
    kills what is left and removes the scratch directory."""

    def __init__(self):
        self.jobs = {}  # name -> job, in start order
        self.dir = None
        self.proc = None
        self.results = {}

    def job_dir(self, name):
        """A directory of the job's own (its ``{job_dir}`` in the command)."""
        return os.path.join(self._scratch(), name)

    def _scratch(self):
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix="minigrad-background-")
        return self.dir

    def add(self, name, argv, cwd, env=None, timeout=600):
        if name in self.jobs:
            return
        os.makedirs(self.job_dir(name), exist_ok=True)
        argv = [a.replace("{job_dir}", self.job_dir(name)) for a in argv]
        env = dict(env if env is not None else os.environ)
        numba_cache = numba_cache_dir()
        if numba_cache is not None:
            env["NUMBA_CACHE_DIR"] = numba_cache
        self.jobs[name] = {"name": name, "argv": [str(a) for a in argv], "cwd": str(cwd),
                           "env": env, "timeout": float(timeout)}

    def start(self):
        """Start the supervisor on every job added so far (once)."""
        if self.proc is not None or not self.jobs:
            return
        spec = os.path.join(self._scratch(), "jobs.json")
        _write_atomically(spec, json.dumps(list(self.jobs.values())))
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), spec, self._scratch(), str(os.getpid())],
            stdin=subprocess.DEVNULL, start_new_session=True)

    def result(self, name):
        """Wait for job ``name`` (starting the lane if nothing started it) and return its
        ``Result``; a job killed at its timeout has ``returncode`` ``"timeout"``."""
        if name in self.results:
            return self.results[name]
        if name not in self.jobs:
            raise KeyError(f"no background job {name!r}: add it to the module's "
                           f"BACKGROUND_JOBS and mark the test @pytest.mark.background")
        self.start()
        status_file = os.path.join(self.dir, f"{name}.status")
        deadline = time.monotonic() + sum(j["timeout"] for j in self.jobs.values()) + 60
        while not os.path.exists(status_file):
            if self.proc.poll() is not None and not os.path.exists(status_file):
                raise RuntimeError(f"the background lane exited ({self.proc.returncode}) "
                                   f"without finishing {name!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"background job {name!r} did not finish")
            time.sleep(POLL_S)
        with open(status_file) as f:
            status = json.load(f)

        def read(stream):
            with open(os.path.join(self.dir, f"{name}.{stream}"), errors="replace") as f:
                return f.read()

        self.results[name] = Result(name, status["status"], read("stdout"), read("stderr"),
                                    status["wall_s"])
        return self.results[name]

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            _kill_group(self.proc)  # the supervisor first, so that it starts nothing more
            for name in self.jobs:  # then a job it left running (a group of its own)
                pid_file = os.path.join(self.dir, f"{name}.pid")
                if os.path.exists(pid_file) and not os.path.exists(
                        os.path.join(self.dir, f"{name}.status")):
                    with open(pid_file) as f:
                        _kill_pid_group(int(f.read()))
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def _kill_pid_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
