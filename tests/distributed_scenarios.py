"""Fault and network scenarios for ``test_distributed.py``, run in ONE local Ray session.

Started by the test module as ``unshare -n python tests/distributed_scenarios.py OUT``
(a new loopback-only network namespace); refuses to run anywhere else. Each scenario
calls ``mg.distributed.train`` while a thread kills an actor part-way, and writes what
it measured to ``OUT/<name>.json`` / ``.npz``; the tests check those files. Sharing one
Ray session keeps the module to a few Ray start-ups on a 2-core machine.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time
import traceback

import numpy as np

import minigrad as mg
from minigrad.distributed import netns, ray_setup

V, D, L = 1000, 4, 6  # table rows, row width, ids per sample


class OnesModel:
    """``cost = sum(E[idx])``: every gradient row is ones, so with SGD(lr=1) the table's
    sum drops by exactly D per applied row update (duplicates included)."""

    def __init__(self, seed=0):
        self.E = mg.shared(np.random.default_rng(seed).normal(size=(V, D)), name="E")

    def make_cost(self, params):
        idx = mg.lmatrix("idx")
        return [idx], self.E[idx].sum()


def ones_data(n=6400, seed=3):
    return (np.random.default_rng(seed).integers(0, V, size=(n, L)).astype(np.int64),)


def _find_actor(ray, suffix, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] == "minigrad" and entry["name"].endswith(suffix):
                return ray.get_actor(entry["name"], namespace="minigrad")
        time.sleep(0.05)
    raise TimeoutError(f"no actor *{suffix} appeared")


def _killer(ray, suffix, how, after_batches, record, finished):
    """Kill the actor named ``*suffix`` once shard-0 has applied ``after_batches`` pushes,
    then wait for it to answer again (a new process); record times."""
    try:
        target = _find_actor(ray, suffix)
        probe = _find_actor(ray, "-shard-0")
        while ray.get(probe.info.remote())["applied_batches"] < after_batches:
            time.sleep(0.01)
        before = ray.get(target.info.remote())
        record["pid_before"] = before["pid"]
        record["t_kill"] = time.time()
        if how == "ray.kill":
            ray.kill(target, no_restart=False)
        else:
            os.kill(before["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not finished.is_set():
            try:
                # a restarted worker answers only between the chunks it is handed again:
                # short waits, so that the end of the run is noticed
                info = ray.get(target.info.remote(), timeout=2)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                time.sleep(0.02)
                continue
            if info["pid"] != before["pid"]:
                record["t_back"] = time.time()
                record.update(recovery_parts(record["t_kill"], info, record["t_back"]))
                return
            time.sleep(0.02)
        if not finished.is_set():
            raise TimeoutError(f"*{suffix} did not come back within 30 s")
        # the run ended first: the figures come from the result (``from_result``)
    except Exception:  # noqa: BLE001 - reported to the test through the record
        record["error"] = traceback.format_exc()


def recovery_parts(t_kill, info, t_back):
    """A recovery in seconds from the kill: ``recovery_s`` until the new process is ready
    (its constructor returned: rows and optimizer state restored, step compiled), split
    into failure detection and process spawn, the new process's imports and the
    constructor; ``answered_s`` until the probe's call came back (for a worker that
    includes waiting behind the chunk the driver has already handed it again)."""
    parts = {"started_at": info["started_at"], "recovery_s": info["started_at"] - t_kill,
             "answered_s": t_back - t_kill,
             "constructor_s": info["started_at"] - info["init_at"]}
    if info.get("born_at") is not None:
        parts.update(detect_spawn_s=info["born_at"] - t_kill,
                     imports_s=info["init_at"] - info["born_at"])
    return parts


def from_result(res, suffix, t_kill):
    """The recovery figures of the actor ``*suffix`` from ``res.recovery_events`` (the
    driver asks every actor for its process times at the end of the run)."""
    name = suffix.lstrip("-")
    event = next((e for e in res.recovery_events
                  if e["actor"] == name and e["kind"] == "restart"), None)
    if event is None or event.get("ready_at") is None:
        return {"error": f"{name} was killed but no restart of it was reported"}
    info = {"started_at": event["ready_at"], "init_at": event["init_at"],
            "born_at": event["born_at"]}
    parts = recovery_parts(t_kill, info, time.time())
    parts.pop("answered_s")
    return parts


def fault(ray, out, name, suffix, how, checkpoint_every=5):
    model = OnesModel()
    data = ones_data()
    before = model.E.get_value()
    record = {"suffix": suffix, "how": how, "checkpoint_every": checkpoint_every}
    finished = threading.Event()
    thread = threading.Thread(target=_killer, args=(ray, suffix, how, 3 * checkpoint_every,
                                                    record, finished), daemon=True)
    thread.start()
    res = mg.distributed.train(model.make_cost, [model.E], data,
                               functools.partial(mg.optim.SGD, lr=1.0), n_workers=2,
                               n_shards=2, epochs=1, batch_size=32, staleness=1,
                               checkpoint_every=checkpoint_every, progress=False,
                               chunk_batches=4)
    finished.set()
    thread.join(30)
    if "recovery_s" not in record and "t_kill" in record:
        record.update(from_result(res, suffix, record["t_kill"]))
    after = model.E.get_value()
    record.update(_summary(res))
    record["applied_row_updates"] = float((before.sum() - after.sum()) / D)
    record["expected_row_updates"] = float(data[0].size)
    record["missing"] = {i["name"]: i["missing_batches"] for i in res.shard_info}
    record["n_shards"] = 2
    record["batch_size"] = 32
    _write(out, name, record)


def equality(ray, out, name, opt_factory):
    """One worker, staleness 0: parameters saved for the test to compare."""
    sys.path.insert(0, os.path.dirname(__file__))
    from test_distributed import EmbeddingModel, embedding_data

    model = EmbeddingModel()
    res = mg.distributed.train(model.make_cost, model.params, embedding_data(),
                               opt_factory, n_workers=1, n_shards=2, epochs=2, batch_size=50,
                               staleness=0, progress=False)
    np.savez(os.path.join(out, f"{name}.npz"), *[p.get_value() for p in model.params])
    _write(out, name, _summary(res))


def clip_optimizer():
    """Adam with a global-norm clip small enough to act at every step."""
    return functools.partial(mg.optim.Adam, lr=0.05,
                             transforms=[mg.optim.ClipGradNorm(0.05)])


def noise_optimizer():
    """Adam with gradient noise, then a global clip (the order once refused)."""
    return functools.partial(mg.optim.Adam, lr=0.05, transforms=[
        mg.optim.GradientNoise(eta=0.05, seed=7), mg.optim.ClipGradNorm(0.05)])


def async_training(ray, out):
    sys.path.insert(0, os.path.dirname(__file__))
    from test_distributed import EmbeddingModel, embedding_data

    model = EmbeddingModel()
    res = mg.distributed.train(model.make_cost, model.params, embedding_data(),
                               functools.partial(mg.optim.Adam, lr=0.1), n_workers=2,
                               n_shards=2, epochs=3, batch_size=50, staleness=2,
                               progress=False)
    record = _summary(res)
    record["losses"] = res.losses
    _write(out, "async", record)


def bad_index(ray, out):
    """A batch with an out-of-range id: the error names the worker; params untouched."""
    model = OnesModel()
    data = ones_data(n=640)
    data[0][300, 2] = V + 5
    before = model.E.get_value()
    t0 = time.time()
    record = {}
    try:
        mg.distributed.train(model.make_cost, [model.E], data,
                             functools.partial(mg.optim.SGD, lr=1.0), n_workers=2,
                             n_shards=2, batch_size=32, progress=False)
        record["raised"] = None
    except mg.distributed.DistributedError as err:
        record.update(raised=type(err).__name__, actor=err.actor, message=str(err))
    record["elapsed_s"] = time.time() - t0
    record["untouched"] = bool(np.array_equal(before, model.E.get_value()))
    _write(out, "bad_index", record)


def shard_dead(ray, out):
    """A shard that may not restart (max_restarts=0) is killed: DistributedError naming it,
    within seconds of the kill, parameters untouched."""
    model = OnesModel()
    data = ones_data(n=64000)
    before = model.E.get_value()
    record = {}

    def kill():
        try:
            target = _find_actor(ray, "-shard-1")
            probe = _find_actor(ray, "-shard-0")
            while ray.get(probe.info.remote())["applied_batches"] < 10:
                time.sleep(0.01)
            record["t_kill"] = time.time()
            ray.kill(target, no_restart=True)
        except Exception:  # noqa: BLE001
            record["kill_error"] = traceback.format_exc()

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    try:
        mg.distributed.train(model.make_cost, [model.E], data,
                             functools.partial(mg.optim.SGD, lr=1.0), n_workers=2,
                             n_shards=2, batch_size=32, progress=False, max_restarts=0)
        record["raised"] = None
    except mg.distributed.DistributedError as err:
        record.update(raised=type(err).__name__, actor=err.actor, message=str(err)[:2000])
    record["t_raise"] = time.time()
    thread.join(10)
    record["untouched"] = bool(np.array_equal(before, model.E.get_value()))
    _write(out, "shard_dead", record)


def cluster_node_removal(out):
    """A 3-node local ``Cluster`` (head + two nodes offering a "shardhost" resource, all
    on 127.0.0.1): the node holding shard-0 is removed mid-run; the shard moves to the
    other node from its checkpoint. Same exact accounting as ``fault``. Ray is imported
    before the safe settings on purpose (``ray_setup`` must still stop the 8.8.8.8
    route probe of each node start: the test reads this process's stderr)."""
    from ray.cluster_utils import Cluster

    record = {"checkpoint_every": 5, "n_shards": 2, "batch_size": 32}
    model, data = OnesModel(), ones_data()
    before = model.E.get_value()
    with ray_setup.scratch_environment() as temp_dir:
        import ray
        import ray._private.utils

        # Cluster() records its address in the shared /tmp/ray/ray_current_cluster (for
        # ray.init("auto")); we connect by address and keep out of shared paths
        ray._private.utils.write_ray_address = lambda *args, **kwargs: None
        node = dict(num_cpus=1, node_ip_address="127.0.0.1", include_dashboard=False)
        cluster = Cluster(initialize_head=True, head_node_args=dict(
            node, temp_dir=temp_dir,
            _system_config=ray_setup.safe_system_config(multi_node=True)))
        try:
            hosts = [cluster.add_node(**node, resources={"shardhost": 4}) for _ in range(2)]
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, namespace="minigrad", log_to_driver=False,
                     logging_level="ERROR")

            def remove():
                try:
                    shard = _find_actor(ray, "-shard-0")
                    while ray.get(shard.info.remote())["applied_batches"] < 15:
                        time.sleep(0.01)
                    where = ray.get(shard.info.remote())["node_id"]
                    victim = next(h for h in hosts if h.node_id == where)
                    record["t_kill"] = time.time()
                    cluster.remove_node(victim, allow_graceful=False)
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline:
                        try:
                            info = ray.get(shard.info.remote(), timeout=30)
                            if info["node_id"] != where:
                                record["moved"] = True
                                record.update(recovery_parts(record["t_kill"], info,
                                                             time.time()))
                                return
                        except ray.exceptions.RayActorError:
                            pass
                        time.sleep(0.02)
                    record["error"] = "shard-0 did not come back on another node in 30 s"
                except Exception:  # noqa: BLE001
                    record["error"] = traceback.format_exc()

            thread = threading.Thread(target=remove, daemon=True)
            thread.start()
            res = mg.distributed.train(model.make_cost, [model.E], data,
                                       functools.partial(mg.optim.SGD, lr=1.0), n_workers=2,
                                       n_shards=2, batch_size=32, staleness=1,
                                       checkpoint_every=5, progress=False, chunk_batches=4,
                                       shard_options={"resources": {"shardhost": 1}})
            thread.join(30)
            record.update(_summary(res))
            record["missing"] = {i["name"]: i["missing_batches"] for i in res.shard_info}
            record["log_findings"] = _log_findings(ray)
        finally:
            ray.shutdown()
            cluster.shutdown()
            netns.kill_namespace(netns.namespace_inode(), exclude={os.getpid()})
    after = model.E.get_value()
    record["applied_row_updates"] = float((before.sum() - after.sum()) / D)
    record["expected_row_updates"] = float(data[0].size)
    _write(out, "cluster_node_removal", record)


def network(ray, out):
    _write(out, "network", {"interfaces": netns.interfaces(),
                            "listeners": netns.listening_sockets(),
                            "non_loopback": netns.non_loopback_listeners(),
                            "log_findings": _log_findings(ray)})


NETWORK_NEEDLES = ("external connectivity", "169.254.169.254", "8.8.8.8", "metadata.google",
                   "usage stats")


def _log_findings(ray):
    """Which session log mentions a route probe, the metadata address or usage stats."""
    session = ray._private.worker._global_node.get_session_dir_path()
    logs = []
    for root, _, files in os.walk(os.path.join(session, "logs")):
        for f in files:
            try:
                with open(os.path.join(root, f), errors="replace") as fh:
                    text = fh.read()
            except OSError:
                continue
            for needle in NETWORK_NEEDLES:
                if needle in text:
                    logs.append(f"{f}: {needle}")
    return logs


def _summary(res):
    return {k: getattr(res, k) for k in (
        "samples_per_s", "wall_s", "recoveries", "recovery_events", "pushes",
        "duplicates_dropped", "lost_pushes", "bytes_per_sample", "samples")} | {
        "final_loss": res.final_loss, "n_losses": [len(w) for w in res.losses]}


def _write(out, name, record):
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(record, f, default=str)


def main(out):
    with open(os.path.join(out, "netns"), "w") as f:
        f.write(str(netns.namespace_inode()))
    netns.bring_loopback_up()
    if not netns.only_loopback():
        raise SystemExit(f"not in a loopback-only namespace: {netns.interfaces()}")
    scenarios = sys.argv[2].split(",") if len(sys.argv) > 2 else [
        "momentum", "clip", "noise", "async", "shard_ray_kill", "shard_sigkill", "worker_sigkill",
        "bad_index", "shard_dead"]
    if scenarios == ["cluster"]:  # a Cluster wants a fresh process (no earlier session)
        try:
            cluster_node_removal(out)
        except Exception:  # noqa: BLE001
            _write(out, "cluster_node_removal", {"error": traceback.format_exc()})
        return
    with ray_setup.local_ray(num_cpus=2) as ray:
        for name in scenarios:
            try:
                if name == "momentum":
                    equality(ray, out, name, functools.partial(
                        mg.optim.Momentum, lr=0.05, momentum=0.9, sparse="exact"))
                elif name == "clip":
                    equality(ray, out, name, clip_optimizer())
                elif name == "noise":
                    equality(ray, out, name, noise_optimizer())
                elif name == "shard_ray_kill":
                    fault(ray, out, name, "-shard-0", "ray.kill")
                elif name == "shard_sigkill":
                    fault(ray, out, name, "-shard-0", "SIGKILL")
                elif name == "worker_sigkill":
                    fault(ray, out, name, "-worker-0", "SIGKILL")
                elif name == "async":
                    async_training(ray, out)
                elif name == "bad_index":
                    bad_index(ray, out)
                elif name == "shard_dead":
                    shard_dead(ray, out)
            except Exception:  # noqa: BLE001 - one failing scenario must not hide the rest
                _write(out, name, {"error": traceback.format_exc()})
            network(ray, out)
    _write(out, "after", {"non_loopback": netns.non_loopback_listeners(),
                          "leftover": len(netns.processes_in_namespace(
                              netns.namespace_inode(), exclude={os.getpid()}))})


if __name__ == "__main__":
    # run as the importable module, so that OnesModel pickles by reference for the actors
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import distributed_scenarios

    distributed_scenarios.main(sys.argv[1])
