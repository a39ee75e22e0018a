"""``tests/background_lane.py``: the jobs' results read as ``subprocess.run``'s would, and no
process outlives its lane (a closed lane, a timeout, a parent that died)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
from background_lane import Lane

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups are POSIX")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not running
        return f.read().split(") ")[-1][0] != "Z"


def _wait_gone(pid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def _python(code):
    return [sys.executable, "-c", textwrap.dedent(code)]


def _sleeper_writing_pids(pid_file):
    """A job that starts a child, writes both pids, then sleeps: a group to kill."""
    return _python(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        with open({str(pid_file)!r} + ".tmp", "w") as f:
            f.write(f"{{os.getpid()}} {{child.pid}}")
        os.replace({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
        time.sleep(300)
    """)


def _read_pids(pid_file, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not pid_file.exists():
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    return [int(p) for p in pid_file.read_text().split()]


def test_results_in_order_with_status_output_and_job_dir(tmp_path):
    lane = Lane()
    try:
        lane.add("ok", _python("import sys; print('out'); print('err', file=sys.stderr)"),
                 cwd=tmp_path)
        lane.add("fails", _python("import sys; print('why'); sys.exit(3)"), cwd=tmp_path)
        lane.add("writes", _python("import sys; open(sys.argv[1] + '/f', 'w').write('x')")
                 + ["{job_dir}"], cwd=tmp_path)
        lane.start()
        ok, fails = lane.result("ok"), lane.result("fails")
        assert (ok.returncode, ok.stdout, ok.stderr) == (0, "out\n", "err\n")
        assert (fails.returncode, fails.stdout) == (3, "why\n")
        assert lane.result("writes").returncode == 0
        assert open(os.path.join(lane.job_dir("writes"), "f")).read() == "x"
        assert lane.result("ok") is ok  # read once
        with pytest.raises(KeyError, match="no background job 'other'"):
            lane.result("other")
        scratch = lane.dir
    finally:
        lane.close()
    assert not os.path.exists(scratch)


def test_jobs_never_share_this_process_numba_cache(tmp_path, monkeypatch):
    """Two processes compiling different signatures of one function into one Numba cache
    can cross its index entries (see background_lane's docstring): the jobs get their own."""
    pytest.importorskip("numba", reason="no Numba cache without numba")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    lane = Lane()
    try:
        lane.add("where", _python("import os; print(os.environ['NUMBA_CACHE_DIR'])"),
                 cwd=tmp_path)
        where = lane.result("where").stdout.strip()
    finally:
        lane.close()
    assert where and os.path.abspath(where) != str(tmp_path / "mine")
    assert "numba-background" in where


def test_result_starts_a_lane_nobody_started(tmp_path):
    lane = Lane()
    try:
        lane.add("late", _python("print(6 * 7)"), cwd=tmp_path)
        assert lane.result("late").stdout == "42\n"
    finally:
        lane.close()


def test_a_job_past_its_timeout_is_killed_with_its_children(tmp_path):
    lane = Lane()
    pid_file = tmp_path / "pids"
    try:
        lane.add("slow", _sleeper_writing_pids(pid_file), cwd=tmp_path, timeout=1.0)
        lane.add("next", _python("print('next')"), cwd=tmp_path)
        lane.start()
        pids = _read_pids(pid_file)
        assert lane.result("slow").returncode == "timeout"
        assert lane.result("next").stdout == "next\n"  # the lane went on
        assert all(_wait_gone(p) for p in pids)
    finally:
        lane.close()


def test_close_kills_the_running_job_and_its_children(tmp_path):
    lane = Lane()
    pid_file = tmp_path / "pids"
    lane.add("slow", _sleeper_writing_pids(pid_file), cwd=tmp_path)
    lane.start()
    pids = _read_pids(pid_file)
    supervisor = lane.proc.pid
    lane.close()
    assert all(_wait_gone(p) for p in [supervisor, *pids])


def test_a_dead_parent_takes_the_lane_and_its_job_along(tmp_path):
    """pytest killed outright: the supervisor sees its parent gone, kills its job, exits."""
    pid_file = tmp_path / "pids"
    here = os.path.dirname(os.path.abspath(__file__))
    parent = subprocess.run(_python(f"""
        import os, sys, time
        sys.path.insert(0, {here!r})
        from background_lane import Lane
        lane = Lane()
        lane.add("slow", {_sleeper_writing_pids(pid_file)!r}, cwd={str(tmp_path)!r})
        lane.start()
        print(lane.proc.pid, lane.dir, flush=True)
        while not os.path.exists({str(pid_file)!r}):
            time.sleep(0.05)
        os._exit(0)  # no close(): as if SIGKILLed
    """), capture_output=True, text=True, timeout=60)
    supervisor, scratch = parent.stdout.split()
    pids = _read_pids(pid_file)
    assert all(_wait_gone(p) for p in [int(supervisor), *pids])
    assert not os.path.exists(scratch)
