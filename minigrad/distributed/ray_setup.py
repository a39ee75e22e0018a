"""Starting and stopping Ray so that it talks to nothing but loopback.

The settings that keep a local cluster off the network (all of them, together):

* run inside a loopback-only network namespace (``netns``): checked, never assumed;
* ``_node_ip_address="127.0.0.1"`` (GCS, raylet, object manager and workers bind there;
  the default is every interface);
* ``include_dashboard=False`` and ``RAY_USAGE_STATS_ENABLED=0`` (the usage reporter is
  what probes the cloud-metadata address and resolves names);
* ``enable_metrics_collection=False`` in ``_system_config`` and
  ``RAY_enable_open_telemetry=0`` (no metrics agent, no exporter);
* a private ``_temp_dir`` (no shared ``/tmp/ray/session_*``) and a scratch ``HOME``
  (Ray writes ``~/.ray``), both removed at shutdown;
* ``log_to_driver=False`` unless asked: worker output stays in the session logs.

Connecting to a real cluster is the caller's explicit ``address=``; then only the
client-side settings apply and the cluster's own configuration is the caller's business.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from minigrad.distributed import netns
from minigrad.distributed.errors import DistributedError

SAFE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
    "RAY_enable_open_telemetry": "0",
    "RAY_DISABLE_IMPORT_WARNING": "1",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_DEDUP_LOGS": "0",
    # Linux reads this as "no multi-node cluster": the node IP is then loopback without
    # first asking the kernel for a route to 8.8.8.8 (otherwise done even when
    # _node_ip_address="127.0.0.1" is given, e.g. by every node a
    # ray.cluster_utils.Cluster adds). Ray reads it once, at import: see
    # ``_no_route_probe`` for a Ray imported before these settings.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}

# Node-failure detection of a multi-node local cluster (``ray.cluster_utils.Cluster``, the
# tests): the GCS declares a node dead after this many missed health checks, and only
# then restarts its actors elsewhere. Ray's defaults (period 3 s, timeout 10 s, 5 misses)
# take ~15 s; these take ~1 s (measured: kill of a node -> its shard restored on another
# node in ~3 s in all, most of it the new process's start). A local raylet answers in
# well under a millisecond, so three misses of 300 ms in a row only happen to a dead one.
# A single node has no other node to move to (a dead actor process is seen at once by
# its raylet), so a one-node cluster keeps Ray's defaults: tight checks would add a risk
# (a stalled raylet on an overloaded box declared dead) and buy nothing.
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 300,
    "health_check_timeout_ms": 300,
    "health_check_failure_threshold": 3,
}


def safe_system_config(extra=None, multi_node=False):
    """``_system_config`` of a local cluster: no metrics, and fast node-failure detection
    when it has several nodes (``multi_node``)."""
    config = {"enable_metrics_collection": False}
    if multi_node:
        config.update(FAST_HEALTH_CHECKS)
    config.update(extra or {})
    return config


def import_ray_or_raise():
    """Fail early and clearly when Ray is not installed (before anything starts)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ImportError(
            "mg.distributed needs Ray: pip install 'minigrad[distributed]' (or 'ray')")


def import_ray():
    try:
        import ray
    except ImportError as err:  # the optional extra is not installed
        raise ImportError(
            "mg.distributed needs Ray: pip install 'minigrad[distributed]' (or 'ray')"
        ) from err
    return ray


@contextlib.contextmanager
def scratch_environment():
    """Ray's environment variables and a scratch ``HOME`` / temp dir for this process.

    Yields the temp dir (short: Ray's socket paths must stay under 107 characters).
    """
    _remove_stale_scratch()
    from minigrad.backends.numba_fused import cache_dir

    root = tempfile.mkdtemp(prefix=f"mgray-{os.getpid()}-")
    home = os.path.join(root, "home")
    os.mkdir(home)
    saved = {k: os.environ.get(k) for k in [*SAFE_ENV, "HOME", "MINIGRAD_CACHE_DIR"]}
    # the caller's kernel cache (entries are written atomically): under the scratch HOME
    # every actor process would compile the generated kernels again
    os.environ.setdefault("MINIGRAD_CACHE_DIR", os.path.dirname(cache_dir()))
    os.environ.update(SAFE_ENV)
    os.environ["HOME"] = home
    try:
        with _no_route_probe():
            yield root
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _no_route_probe():
    """``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` for a Ray already imported (by the caller,
    or ``ray.cluster_utils`` imported first): Ray read the variable at import into
    ``ray_constants.ENABLE_RAY_CLUSTER``, which ``services.get_node_ip_address`` consults
    at each call; left true, every node start asks the kernel for a route to 8.8.8.8
    (``network_util.cc: Failed to determine local IP via external connectivity``)."""
    import sys

    constants = sys.modules.get("ray._private.ray_constants")
    if constants is None or not getattr(constants, "ENABLE_RAY_CLUSTER", False):
        yield
        return
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = True


def _remove_stale_scratch():
    """Remove scratch dirs left by our own processes that died without cleaning up (a
    SIGKILLed driver): ``mgray-<pid>-*`` whose process no longer exists."""
    base = tempfile.gettempdir()
    for name in os.listdir(base):
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != "mgray" or not parts[1].isdigit():
            continue
        if not os.path.exists(f"/proc/{parts[1]}"):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def init_local(temp_dir, num_cpus=None, log_to_driver=False, system_config=None,
               object_store_memory=None):
    """``ray.init`` of a fresh single-node cluster bound to 127.0.0.1 (safe settings).

    Refuses (``DistributedError``) unless this process is in a loopback-only namespace.
    """
    if not netns.only_loopback():
        raise DistributedError(
            "driver", "refusing to start a local Ray outside a loopback-only network "
            f"namespace (interfaces here: {netns.interfaces()})")
    ray = import_ray()
    netns.bring_loopback_up()
    return ray.init(
        _node_ip_address="127.0.0.1", include_dashboard=False, _temp_dir=temp_dir,
        num_cpus=num_cpus, log_to_driver=log_to_driver, configure_logging=True,
        logging_level="ERROR", object_store_memory=object_store_memory,
        _system_config=safe_system_config(system_config), namespace="minigrad",
    )


@contextlib.contextmanager
def local_ray(num_cpus=None, log_to_driver=False, system_config=None,
              object_store_memory=None):
    """A local Ray for the duration of the block; afterwards no Ray process remains.

    Must run in a loopback-only namespace. At exit: ``ray.shutdown()``, then a check that
    nothing listened on a non-loopback address (``DistributedError`` if something did),
    then every process left in this namespace except this one is killed (they can only
    be Ray's: the namespace was made for it).
    """
    with scratch_environment() as temp_dir:
        ray = import_ray()  # after the environment: Ray reads some of it at import
        inode = netns.namespace_inode()
        try:
            init_local(temp_dir, num_cpus, log_to_driver, system_config, object_store_memory)
            yield ray
            leaks = netns.non_loopback_listeners()
            if leaks:
                raise DistributedError("driver", f"Ray listened on non-loopback sockets {leaks}")
        finally:
            with contextlib.suppress(Exception):
                ray.shutdown()
            netns.kill_namespace(inode, exclude={os.getpid(), *_ancestors()})


def _ancestors():
    """PIDs of this process's ancestors (``unshare`` and the shell share the namespace)."""
    pids, pid = [], os.getppid()
    while pid > 1:
        pids.append(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


@contextlib.contextmanager
def connected_ray(address):
    """Connect to the existing cluster at ``address`` (the caller's explicit choice) with
    the client-side safe settings; disconnect afterwards (the cluster keeps running)."""
    os.environ.update({k: v for k, v in SAFE_ENV.items() if k not in os.environ})
    ray = import_ray()
    ray.init(address=address, log_to_driver=False, configure_logging=True,
             logging_level="ERROR", namespace="minigrad")
    try:
        yield ray
    finally:
        ray.shutdown()
