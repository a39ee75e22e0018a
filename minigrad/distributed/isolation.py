"""Running a local-Ray training call in a child process inside a new loopback-only
network namespace, for a caller that lives in an ordinary one.

The call's arguments go to the child through a private temporary directory (pickle: our
own files, mode 0700 directory), the child (``_child.py``) checks its namespace, runs
``train`` there (which starts and stops Ray) and writes back the trained values or the
exception; the parent writes the values into the caller's parameters, or raises. When
the child is gone, every process still in its namespace (only Ray's can be there) is
killed, so nothing outlives the call, on success, failure or Ctrl-C.
"""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time

from minigrad.distributed import netns
from minigrad.distributed.errors import DistributedError


def train_in_namespace(make_cost, params, dataset, optimizer, kwargs, t_call):
    from minigrad.distributed.driver import _write_back

    tmp = tempfile.mkdtemp(prefix="mg-dist-job-")
    try:
        with open(os.path.join(tmp, "job.pkl"), "wb") as f:
            pickle.dump((make_cost, params, dataset, optimizer, kwargs), f,
                        protocol=pickle.HIGHEST_PROTOCOL)
        cmd = netns.loopback_command([sys.executable, "-m", "minigrad.distributed._child",
                                      tmp])
        if cmd is None:
            raise DistributedError(
                "driver", "cannot create a loopback-only network namespace here (needs "
                "'unshare -n' as root or unprivileged user namespaces for 'unshare -rn'); "
                "run the call inside such a namespace, or connect to a cluster of your own "
                "with address=")
        status, isolation = _run_child(cmd, tmp)
        kind, *rest = status
        if kind == "ok":
            values, result = rest
            _write_back(params, values)
            result.wall_s = time.perf_counter() - t_call
            result.isolation = isolation
            result.notes.append("ran in a child process in a new loopback-only network "
                                "namespace (this process is in an ordinary one)")
            return result
        raise rest[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_child(cmd, tmp):
    env = dict(os.environ)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        rc = proc.wait()
    except BaseException:  # Ctrl-C or anything else: the child and its namespace go too
        proc.kill()
        proc.wait()
        raise
    finally:
        inode, killed = reap_namespace_of(tmp)
    isolation = {"netns_inode": inode, "leftover_killed": len(killed)}
    result = os.path.join(tmp, "result.pkl")
    if not os.path.exists(result):
        raise DistributedError("driver", f"the namespace child process exited with code {rc} "
                               "before reporting a result")
    with open(result, "rb") as f:
        return pickle.load(f), isolation


def reap_namespace_of(tmp):
    """Kill whatever is left in the namespace whose inode a child wrote to ``tmp/netns``
    (it does so first thing); never this process's own namespace.

    Returns ``(inode, killed pids)`` (``(None, [])`` when no inode was recorded).
    """
    try:
        with open(os.path.join(tmp, "netns")) as f:
            inode = int(f.read())
    except (OSError, ValueError):
        return None, []
    if inode == netns.namespace_inode():  # never our own namespace
        return inode, []
    return inode, netns.kill_namespace(inode)
