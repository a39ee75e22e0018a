"""``mg.distributed``: sharding, id remapping, the network namespace, and (with Ray) training.

Every Ray start happens in a new loopback-only network namespace: ``train`` called from
this (ordinary) namespace re-runs itself in a child process in one, and the fault
scenarios run as ``tests/distributed_scenarios.py`` under ``unshare``, all in one Ray
session (a module fixture) to keep the module to a few Ray start-ups. Without Ray, or
where no namespace can be made, the Ray tests skip with the reason.
"""
from __future__ import annotations

import functools
import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import scipy.sparse as sp

import minigrad as mg
from minigrad.distributed import netns, plan, sharding
from minigrad.optim.serialization import CheckpointError

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# --- a small embedding classifier: a sharded table E and dense W, c --------------------
class EmbeddingModel:
    def __init__(self, V=500, D=6, C=3, seed=0):
        r = np.random.default_rng(seed)
        self.E = mg.shared(r.normal(size=(V, D)) * 0.3, name="E")
        self.W = mg.shared(r.normal(size=(D, C)) * 0.3, name="W")
        self.c = mg.shared(np.zeros(C), name="c")

    @property
    def params(self):
        return [self.E, self.W, self.c]

    def make_cost(self, params):
        tok, y = mg.lmatrix("tok"), mg.lvector("y")
        h = self.E[tok].mean(axis=1)
        return [tok, y], mg.nn.cross_entropy(h @ self.W + self.c, y)


def embedding_data(n=1000, length=5, V=500, seed=1):
    r = np.random.default_rng(seed)
    tok = (r.zipf(1.3, size=(n, length)) % V).astype(np.int64)
    y = (tok[:, 0] % 3).astype(np.int64)
    return tok, y


def single_process(model, data, opt, epochs, batch_size, seed=0):
    """The reference: the same batches, one compiled step with the optimizer's updates."""
    inputs, cost = model.make_cost(model.params)
    step = mg.function(inputs, cost, updates=opt(model.params).updates(cost))
    losses = []
    for rows in plan.batch_plan(data[0].shape[0], epochs, batch_size, seed):
        losses.append(float(step(*[c[rows] for c in data])))
    return losses


# --- no Ray needed --------------------------------------------------------------------
def test_batch_plan_covers_each_row_once_per_epoch():
    batches = plan.batch_plan(103, 2, 10, seed=4)
    assert len(batches) == 2 * 11
    for e in range(2):
        rows = np.concatenate(batches[e * 11:(e + 1) * 11])
        assert np.array_equal(np.sort(rows), np.arange(103))
    assert not np.array_equal(batches[0], batches[11])
    assert all(np.array_equal(a, b) for a, b in zip(batches, plan.batch_plan(103, 2, 10, 4)))
    assert plan.chunks(10, 4) == [(0, 4), (4, 8), (8, 10)]


def test_analyse_groups_fm_tables_by_their_csr_input():
    fm = mg.models.FactorizationMachine(50, 3)
    X, y = mg.csr_matrix("X"), mg.vector("y")
    layout = sharding.analyse([X, y], fm.cost(X, y), fm.params)
    assert [(g.tables, g.inputs, g.n_rows) for g in layout.groups] == [([1, 2], [0], 50)]
    assert layout.dense == [0]  # the bias


def test_analyse_masked_embedding_ids_come_from_tokens():
    m = mg.models.MaskedEmbeddingClassifier(40, 4, 3)
    tok, mask, y = mg.lmatrix("tok"), mg.matrix("mask"), mg.lvector("y")
    layout = sharding.analyse([tok, mask, y], m.cost(tok, mask, y), m.params)
    assert [(g.tables, g.inputs) for g in layout.groups] == [([0, 1], [0])]
    assert layout.dense == [2, 3]
    assert layout.id_inputs == [0, 1]  # the ids of the real tokens need the mask too


def test_analyse_dense_use_makes_a_table_dense():
    E = mg.shared(np.ones((10, 2)), name="E")
    idx = mg.lvector("idx")
    cost = E[idx].sum() + (E ** 2).sum()
    layout = sharding.analyse([idx], cost, [E])
    assert layout.groups == [] and layout.dense == [0]


def test_analyse_disconnected_parameter_raises():
    E, F = mg.shared(np.ones((10, 2)), name="E"), mg.shared(np.ones(3), name="F")
    idx = mg.lvector("idx")
    with pytest.raises(mg.DisconnectedInputError):
        sharding.analyse([idx], E[idx].sum(), [E, F])


@pytest.mark.parametrize("csr", [False, True])
def test_remap_input_round_trips(csr):
    r = np.random.default_rng(0)
    ids = r.integers(0, 1000, size=(7, 4))
    if csr:
        X = sp.csr_matrix((np.ones(ids.size), ids.reshape(-1), np.arange(0, ids.size + 1, 4)),
                          shape=(7, 1000))
        X.sort_indices()
        unique = np.unique(X.indices)
        local = sharding.remap_input(X, unique)
        assert local.shape == (7, unique.shape[0])
        assert np.array_equal(unique[local.indices], X.indices)
        assert np.array_equal(local.indptr, X.indptr)
    else:
        unique = np.unique(ids)
        local = sharding.remap_input(ids, unique)
        assert np.array_equal(unique[local], ids)


def test_split_and_assemble_by_shard():
    unique = np.array([0, 3, 4, 7, 8, 10])
    pos = sharding.split_by_shard(unique, 3)
    assert [p.tolist() for p in pos] == [[0, 1], [2, 3, 5], [4]]  # 10 % 3 == 1
    table = np.arange(11.0)[:, None] * np.ones((1, 2))
    parts = [sharding.shard_slice(table, s, 3)[sharding.local_rows(unique[p], 3)]
             for s, p in enumerate(pos)]
    local = sharding.assemble(parts, 6, (2,), table.dtype, pos)
    assert np.array_equal(local, table[unique])
    assert sum(sharding.shard_row_count(11, s, 3) for s in range(3)) == 11


def test_stand_in_costs_one_row():
    s = sharding.stand_in((10 ** 7, 32), np.float64)
    assert s.shape == (10 ** 7, 32) and s.strides[0] == 0 and not s.flags.writeable


def test_non_loopback_listener_is_detected():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert ("tcp", "127.0.0.1", port) in netns.listening_sockets()
        assert all(p != port for _, _, p in netns.non_loopback_listeners())
    assert netns.is_loopback_address("::1") and netns.is_loopback_address("::ffff:127.0.0.1")
    assert not netns.is_loopback_address("0.0.0.0")


def test_import_minigrad_does_not_import_ray():
    code = "import minigrad, minigrad.distributed, sys; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


class Unchanged:
    """A user transform (no worker-side form): it stays in the shards' optimizers."""

    def __call__(self, grads, step):
        return grads

    def eager(self, grads, step, indices):
        return grads


def _train_args(**kw):
    model = EmbeddingModel()
    args = dict(make_cost=model.make_cost, params=model.params, dataset=embedding_data(),
                optimizer=functools.partial(mg.optim.SGD, lr=0.1), progress=False)
    args.update(kw)
    return model, args


@pytest.mark.parametrize("bad, error, match", [
    ({"n_workers": 0}, ValueError, "n_workers must be a positive int"),
    ({"staleness": -1}, ValueError, "staleness must be an int >= 0"),
    ({"dataset": (np.zeros((5, 2), np.int64), np.zeros(4, np.int64))}, ValueError,
     "same number of rows"),
    ({"make_cost": lambda params: None}, TypeError, "make_cost must be picklable"),
    ({"optimizer": lambda params: None}, TypeError, "optimizer must be a picklable"),
    ({"optimizer": functools.partial(mg.optim.SGD, lr=-1.0)}, ValueError, "lr must be .*>= 0"),
    ({"params": []}, TypeError, "non-empty list of mg.shared"),
    ({"optimizer": functools.partial(mg.optim.SGD, lr=0.1, transforms=[
        Unchanged(), mg.optim.ClipGradNorm(1.0)])}, ValueError,
     "ClipGradNorm and GradientNoise .*must come first"),
    ({"optimizer": functools.partial(mg.optim.SGD, lr=0.1, transforms=[
        mg.optim.ClipGradNorm(1.0), Unchanged(), mg.optim.GradientNoise()])}, ValueError,
     "ClipGradNorm and GradientNoise .*must come first"),
])
def test_bad_arguments_fail_before_ray_starts(bad, error, match):
    model, args = _train_args(**bad)
    before = [p.get_value() for p in model.params]
    with pytest.raises(error, match=match):
        mg.distributed.train(**args)
    assert all(np.array_equal(b, p.get_value()) for b, p in zip(before, model.params))


def test_global_clip_equals_clip_grad_norm_of_one_process():
    """The worker's clip (the whole gradient, before the split by shard) is the compiled
    ``mg.optim.clip_grad_norm`` on the same gradients: row-sparse ones coalesced."""
    from minigrad.distributed import clipping
    from minigrad.types import RowSparse

    r = np.random.default_rng(5)
    ids = np.array([3, 1, 3, 7, 1])  # repeats: coalesced before the norm
    rows, dense = r.normal(size=(5, 4)), r.normal(size=(4, 3))
    g_rows = mg.shared(np.zeros((5, 4)))
    E, W = mg.shared(r.normal(size=(10, 4))), mg.shared(r.normal(size=(4, 3)))
    idx = mg.lvector("idx")
    cost = (E[idx] * g_rows).sum() + (W * mg.constant(dense)).sum()
    g_rows.set_value(rows)
    for max_norm in (0.5, 1e3):  # clipping, and a norm below the bound (unchanged)
        want = mg.function([idx], mg.optim.clip_grad_norm(mg.grad(cost, [E, W]),
                                                          max_norm))(ids)
        got = clipping.clip_global([RowSparse(ids, rows, (10, 4)), dense], [max_norm])
        np.testing.assert_allclose(got[0].to_dense(), want[0].to_dense(), rtol=1e-13)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-13)
    clipped_rows, clipped_dense = clipping.clip_global([RowSparse(ids, rows, (10, 4)),
                                                        dense], [0.5])
    norm = np.sqrt((clipped_rows.to_dense() ** 2).sum() + (clipped_dense ** 2).sum())
    assert abs(norm - 0.5) < 1e-6


def test_shard_restart_restores_rows_state_and_applied_batches(tmp_path):
    """A shard built over an existing checkpoint takes its rows, optimizer state, step
    counters and applied-batch bitmap from it (not from the initial rows), and refuses a
    checkpoint whose rows do not fit."""
    from minigrad.distributed.shard import Shard

    r = np.random.default_rng(2)
    slices = [np.float64(0.5), np.zeros((50, 1)), r.normal(size=(50, 3))]
    factory = pickle.dumps(functools.partial(mg.optim.Adam, lr=0.05, sparse="exact"))
    file = str(tmp_path / "shard-0.json")
    first = Shard("shard-0", slices, ["b", "w", "V"], factory, 10, 3, file)
    snapshot = None
    for b in (0, 2, 5, 7):  # the 3rd push checkpoints; the 4th is lost with the process
        ids = np.unique(r.integers(0, 50, 12))
        first.push(0, b, [np.float64(1.0), (ids, np.ones((ids.size, 1))),
                          (ids, r.normal(size=(ids.size, 3)))])
        if b == 5:
            snapshot = ([p.get_value() for p in first.params],
                        [o.state_dict() for o in first.opts])
    back = Shard("shard-0", slices, ["b", "w", "V"], factory, 10, 3, file)
    assert back.restored_from == file
    assert np.flatnonzero(back.applied).tolist() == [0, 2, 5]
    assert back.counters["pushes"] == 3 and not back.push(0, 5, None)  # a repeat: dropped
    values, states = snapshot
    for p, v in zip(back.params, values):
        assert np.array_equal(p.get_value(), v)
    for opt, want in zip(back.opts, states):
        got = opt.state_dict()
        assert got["t"] == want["t"] and got["state"].keys() == want["state"].keys()
        assert all(np.array_equal(got["state"][k], want["state"][k]) for k in want["state"])
    wrong = [np.float64(0.5), np.zeros((50, 1)), np.zeros((50, 4))]
    with pytest.raises(CheckpointError, match="rows of 'V' do not match shard-0"):
        Shard("shard-0", wrong, ["b", "w", "V"], factory, 10, 3, file)


def test_shards_leave_clip_and_noise_to_the_workers():
    from minigrad.distributed import worker_transforms
    from minigrad.distributed.shard import Shard

    transforms = [mg.optim.GradientNoise(), mg.optim.ClipGradNorm(1.0), Unchanged()]
    opt = functools.partial(mg.optim.Adam, lr=0.1, transforms=transforms)
    shard = Shard("shard-0", [np.ones((4, 2))], ["E"], pickle.dumps(opt), n_batches=3)
    assert [type(t).__name__ for t in shard.opts[0].transforms] == ["Unchanged"]
    on_workers = worker_transforms.leading(opt([mg.shared(np.ones((2, 2)))]))
    assert [type(t).__name__ for t in on_workers] == ["GradientNoise", "ClipGradNorm"]


@pytest.mark.parametrize("step", [0, 5])
def test_worker_noise_is_the_one_process_draw(step):
    """The worker's noise (whole gradient, parameter ``i`` at its position, step = batch)
    is what ``GradientNoise`` adds in the compiled single-process step: same stream, same
    coalesced rows, bit for bit; with a clip after it, the clip of the noisy gradient."""
    from minigrad.distributed import worker_transforms
    from minigrad.types import RowSparse

    r = np.random.default_rng(9)
    ids = np.array([6, 2, 6, 9, 0])  # repeats: coalesced before the draw
    rows, dense = r.normal(size=(5, 3)), r.normal(size=(3, 2))
    g_rows = mg.shared(rows)
    E, W = mg.shared(r.normal(size=(12, 3))), mg.shared(r.normal(size=(3, 2)))
    idx = mg.lvector("idx")
    cost = (E[idx] * g_rows).sum() + (W * mg.constant(dense)).sum()
    noise = mg.optim.GradientNoise(eta=0.2, gamma=0.55, seed=11)
    clip = mg.optim.ClipGradNorm(0.7)
    t = mg.shared(np.int64(step))
    grads = mg.grad(cost, [E, W])
    want = mg.function([idx], clip(noise(grads, t), t))(ids)
    got = worker_transforms.apply([RowSparse(ids, rows, (12, 3)), dense], [noise, clip], step)
    assert np.array_equal(got[0].indices, want[0].coalesce().indices)
    np.testing.assert_allclose(got[0].to_dense(), want[0].to_dense(), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-13, atol=1e-15)
    plain = worker_transforms.apply([RowSparse(ids, rows, (12, 3)), dense], [clip], step)
    assert not np.allclose(got[1], plain[1])  # the noise acted


# --- with Ray, in loopback-only namespaces ---------------------------------------------
def _namespace_reason():
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not installed (pip install 'minigrad[distributed]')"
    if netns.loopback_command([sys.executable, "-c", "pass"]) is None:
        return "cannot create a loopback-only network namespace here (unshare)"
    return None


NEEDS_RAY = pytest.mark.skipif(_namespace_reason() is not None,
                               reason=str(_namespace_reason()))


def _run_scenarios(*names):
    """Run tests/distributed_scenarios.py in a new loopback-only namespace; its records."""
    out = tempfile.mkdtemp(prefix="mg-dist-test-")
    cmd = netns.loopback_command([sys.executable, os.path.join(HERE, "distributed_scenarios.py"),
                                  out, *([",".join(names)] if names else [])])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]))
    from minigrad.distributed import isolation

    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    finally:
        _, killed = isolation.reap_namespace_of(out)  # whatever the script left there
    results = {}
    for f in os.listdir(out):
        if f.endswith(".json"):
            with open(os.path.join(out, f)) as fh:
                results[f[:-5]] = json.load(fh)
    results["_dir"], results["_proc"], results["_leftover"] = out, proc, killed
    return results


@pytest.fixture(scope="module")
def scenarios():
    """The single-node scenarios, all in one Ray session."""
    results = _run_scenarios()
    yield results
    import shutil

    shutil.rmtree(results["_dir"], ignore_errors=True)


def _scenario(scenarios, name):
    if name not in scenarios:
        proc = scenarios["_proc"]
        pytest.fail(f"scenario {name} wrote nothing; rc={proc.returncode}\n"
                    f"{proc.stderr[-3000:]}")
    record = scenarios[name]
    assert "error" not in record, record["error"]
    return record


@NEEDS_RAY
@pytest.mark.distributed
def test_one_worker_sync_equals_single_process_lazy_adam():
    """From this ordinary namespace: train re-runs itself in a loopback-only child."""
    opt = functools.partial(mg.optim.Adam, lr=0.01, sparse="lazy")
    model, data = EmbeddingModel(), embedding_data()
    res = mg.distributed.train(model.make_cost, model.params, data, opt, n_workers=1,
                               n_shards=2, epochs=2, batch_size=50, staleness=0,
                               progress=False)
    ref = EmbeddingModel()
    losses = single_process(ref, data, opt, epochs=2, batch_size=50)
    assert np.array_equal(model.E.get_value(), ref.E.get_value())  # bit-exact table
    np.testing.assert_allclose(model.W.get_value(), ref.W.get_value(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(model.c.get_value(), ref.c.get_value(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res.losses[0], losses, rtol=1e-12)
    assert res.samples == 2 * data[0].shape[0] and res.recoveries == 0
    assert res.lost_pushes == 0 and res.duplicates_dropped == 0
    assert any("loopback-only network namespace" in n for n in res.notes)
    assert res.isolation["leftover_killed"] == 0  # Ray had shut down cleanly in the child
    assert netns.processes_in_namespace(res.isolation["netns_inode"]) == []


@NEEDS_RAY
@pytest.mark.distributed
def test_one_worker_sync_equals_single_process_exact_momentum(scenarios):
    _scenario(scenarios, "momentum")
    opt = functools.partial(mg.optim.Momentum, lr=0.05, momentum=0.9, sparse="exact")
    ref = EmbeddingModel()
    single_process(ref, embedding_data(), opt, epochs=2, batch_size=50)
    with np.load(os.path.join(scenarios["_dir"], "momentum.npz")) as z:
        got = [z[f"arr_{i}"] for i in range(3)]
    assert np.array_equal(got[0], ref.E.get_value())
    np.testing.assert_allclose(got[1], ref.W.get_value(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got[2], ref.c.get_value(), rtol=1e-12, atol=1e-14)


@NEEDS_RAY
@pytest.mark.distributed
@pytest.mark.parametrize("name, optimizer, without", [
    # ClipGradNorm in the factory clips the whole gradient (every table's rows on every
    # shard, and the dense parameters) by one global norm, as in one process.
    ("clip", "clip_optimizer", lambda sc: functools.partial(mg.optim.Adam, lr=0.05)),
    # GradientNoise (then a clip): the workers draw the one process's noise (parameter i
    # at its position, step = batch); before, every shard drew its own.
    ("noise", "noise_optimizer", lambda sc: sc.clip_optimizer()),
])
def test_worker_transforms_one_worker_sync_equal_single_process(scenarios, name, optimizer,
                                                                without):
    """A transform run on the workers (clip, noise then clip): one worker at staleness 0
    equals one process with the same factory, and differs from one without the transform
    (``without``: the same factory less it), so the transform acted."""
    import distributed_scenarios as sc

    _scenario(scenarios, name)
    ref = EmbeddingModel()
    single_process(ref, embedding_data(), getattr(sc, optimizer)(), epochs=2, batch_size=50)
    with np.load(os.path.join(scenarios["_dir"], f"{name}.npz")) as z:
        got = [z[f"arr_{i}"] for i in range(3)]
    for g, p in zip(got, ref.params):
        np.testing.assert_allclose(g, p.get_value(), rtol=1e-12, atol=1e-14)
    other = EmbeddingModel()
    single_process(other, embedding_data(), without(sc), epochs=2, batch_size=50)
    assert not np.allclose(got[0], other.E.get_value(), rtol=1e-6)  # the transform acted


@NEEDS_RAY
@pytest.mark.distributed
def test_two_workers_two_shards_async_loss_falls(scenarios):
    record = _scenario(scenarios, "async")
    opt = functools.partial(mg.optim.Adam, lr=0.1)
    ref = single_process(EmbeddingModel(), embedding_data(), opt, epochs=3, batch_size=50)
    ref_final = float(np.mean(ref[-len(ref) // 10:]))
    first = np.mean([w[:3] for w in record["losses"]])
    assert all(record["n_losses"]) and sum(record["n_losses"]) == len(ref)
    assert record["final_loss"] < 0.8 * first
    # stale updates cost a little: within 15% of one process on the same batches
    assert record["final_loss"] < 1.15 * ref_final + 0.02


@NEEDS_RAY
@pytest.mark.distributed
@pytest.mark.parametrize("name", ["shard_ray_kill", "shard_sigkill", "worker_sigkill"])
def test_fault_accounting_is_exact(scenarios, name, record_property):
    import distributed_scenarios as sc

    record = _scenario(scenarios, name)
    data = sc.ones_data()
    batches = plan.batch_plan(data[0].shape[0], 1, record["batch_size"], 0)
    expected_lost = 0
    for shard, missing in record["missing"].items():
        s = int(shard.split("-")[1])
        for b in missing:
            expected_lost += int((data[0][batches[b]] % record["n_shards"] == s).sum())
    lost = record["expected_row_updates"] - record["applied_row_updates"]
    assert lost == expected_lost, record  # every lost row update accounted for, none doubled
    assert lost >= 0, record
    assert record["lost_pushes"] <= record["checkpoint_every"], record
    # kill -> the new process restored and serving: under 5 s on an idle box (ray.kill
    # 0.8-1.3 s, shard SIGKILL 1.3-1.9 s, worker SIGKILL ~1.8 s; more under load). Bounded
    # here only as a no-hang check (the box is shared); the figure is reported.
    _report_recovery(record_property, record)
    assert record["recovery_s"] < 30.0, record
    assert record["recoveries"] >= 1, record
    killed = record["suffix"].lstrip("-")  # the result times the new process too
    restart = [e for e in record["recovery_events"]
               if e["actor"] == killed and e["kind"] == "restart"]
    assert restart and restart[0]["born_at"] <= restart[0]["init_at"] <= restart[0]["ready_at"]
    assert restart[0]["ready_at"] > record["t_kill"], record
    if name == "worker_sigkill":
        assert lost == 0 and record["lost_pushes"] == 0  # shards lived: nothing lost


@NEEDS_RAY
@pytest.mark.distributed
def test_user_error_names_worker_and_leaves_params(scenarios):
    record = _scenario(scenarios, "bad_index")
    assert record["raised"] == "DistributedError"
    assert record["actor"].startswith("worker-")
    assert "out of range" in record["message"]
    assert record["untouched"] and record["elapsed_s"] < 60


@NEEDS_RAY
@pytest.mark.distributed
def test_unrecoverable_shard_raises_naming_it_within_seconds(scenarios):
    record = _scenario(scenarios, "shard_dead")
    assert record["raised"] == "DistributedError", record
    assert record["actor"] == "shard-1"
    assert record["t_raise"] - record["t_kill"] < 30  # within seconds: no hang
    assert record["untouched"]


@NEEDS_RAY
@pytest.mark.distributed
def test_network_safety(scenarios):
    record = _scenario(scenarios, "network")
    assert record["interfaces"] == ["lo"]
    assert record["listeners"], "Ray should have been listening (on loopback)"
    assert record["non_loopback"] == []
    assert record["log_findings"] == []  # no route probe to 8.8.8.8, no metadata probe
    _no_probe_in(scenarios["_proc"].stderr)
    after = _scenario(scenarios, "after")
    assert after["non_loopback"] == [] and after["leftover"] == 0
    assert scenarios["_leftover"] == []  # nothing was left in the namespace to kill


@NEEDS_RAY
@pytest.mark.distributed
def test_cluster_node_removal_moves_the_shard_and_counts_exactly(record_property):
    """Three local nodes on 127.0.0.1 (``ray.cluster_utils.Cluster``); the node holding
    shard-0 is removed. Recovery includes Ray's node failure detection (health checks
    tightened to ~1 s, ``ray_setup.FAST_HEALTH_CHECKS``): 2.6 s measured in all at load
    average ~8 on this shared 2-core box (4.8-5.8 s with the earlier 500 ms checks)."""
    import shutil

    import distributed_scenarios as sc

    results = _run_scenarios("cluster")
    shutil.rmtree(results["_dir"], ignore_errors=True)
    record = _scenario(results, "cluster_node_removal")
    assert record["moved"], record
    data = sc.ones_data()
    batches = plan.batch_plan(data[0].shape[0], 1, record["batch_size"], 0)
    expected_lost = sum(int((data[0][batches[b]] % 2 == int(name.split("-")[1])).sum())
                        for name, missing in record["missing"].items() for b in missing)
    lost = record["expected_row_updates"] - record["applied_row_updates"]
    assert lost == expected_lost >= 0, record
    assert record["lost_pushes"] <= 2 * record["checkpoint_every"], record  # both may move
    _report_recovery(record_property, record)
    assert record["recovery_s"] < 30.0, record  # a no-hang check, not a speed test
    assert results["_leftover"] == []
    # no node start asked for a route to 8.8.8.8 (the driver's C++ logs it on stderr)
    assert record["log_findings"] == [], record["log_findings"]
    _no_probe_in(results["_proc"].stderr)


def _no_probe_in(stderr):
    import distributed_scenarios as sc

    found = [line for line in stderr.splitlines()
             if any(n in line for n in sc.NETWORK_NEEDLES)]
    assert found == [], found


def _report_recovery(record_property, record):
    """Put the measured recovery and its parts in the test report (``-rP``, JUnit XML)."""
    keys = ("recovery_s", "detect_spawn_s", "imports_s", "constructor_s", "answered_s")
    parts = {k: round(record[k], 3) for k in keys if record.get(k) is not None}
    for k, v in parts.items():
        record_property(k, v)
    what = f"{record['how']} of *{record['suffix']}" if "how" in record else "node removal"
    print(f"recovery ({what}): {parts}")


def test_pickled_error_keeps_actor_and_traceback():
    err = mg.distributed.DistributedError("shard-1", "died", "Traceback ...")
    back = pickle.loads(pickle.dumps(err))
    assert (back.actor, back.reason, back.remote_traceback) == ("shard-1", "died",
                                                                "Traceback ...")
    assert "shard-1: died" in str(back)
