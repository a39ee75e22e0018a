"""Optimizer state: state_dict round trips, mg.save/mg.load, corrupt files, atomic saves."""
from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

import minigrad as mg
from minigrad.optim.serialization import CheckpointError

V, D = 12, 3


def setup(seed=0, cls=mg.optim.Adam, **kw):
    rng = np.random.default_rng(seed)
    E = mg.shared(rng.normal(size=(V, D)), name="E")
    W = mg.shared(rng.normal(size=(D, 2)), name="W")
    ge = mg.RowSparseType("float64", (V, D)).make_variable("ge")
    gw = mg.matrix("gw")
    opt = cls([E, W], lr=0.05, sparse="exact", **kw)
    step = mg.function([ge, gw], updates=opt.updates(grads=[ge, gw]))
    return E, W, opt, step


def grads(rng):
    idx = rng.integers(0, V // 2, size=3)
    return mg.RowSparse(idx, rng.normal(size=(3, D)), (V, D)), rng.normal(size=(D, 2))


def train(step, rng, n):
    for _ in range(n):
        step(*grads(rng))


def snapshot(E, W, opt):
    return [E.get_value(), W.get_value(), int(opt.t.get_value())] + [
        v.get_value() for s in opt.state for v in s.values()]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_save_load_round_trip(tmp_path):
    E, W, opt, step = setup()
    train(step, np.random.default_rng(1), 20)
    path = tmp_path / "ckpt.npz"
    mg.save(path, [E, W], opt)
    train(step, np.random.default_rng(2), 10)
    expected = snapshot(E, W, opt)

    E2, W2, opt2, step2 = setup(seed=9)
    meta = mg.load(path, [E2, W2], opt2)
    assert meta["t"] == 20 and meta["names"] == ["E", "W"] and meta["optimizer"] == "Adam"
    train(step2, np.random.default_rng(2), 10)
    assert_same(snapshot(E2, W2, opt2), expected)


def test_state_dict_round_trip_flushes_first():
    E, W, opt, step = setup(cls=mg.optim.Momentum)
    train(step, np.random.default_rng(1), 15)
    sd = opt.state_dict()
    assert sd["t"] == 15 and (opt.last[0].value == 15).all()  # flushed
    train(step, np.random.default_rng(3), 5)
    expected = snapshot(E, W, opt)
    E2, W2, opt2, step2 = setup(cls=mg.optim.Momentum)
    train(step2, np.random.default_rng(1), 15)
    opt2.load_state_dict(opt.state_dict() | {"t": 15, "state": sd["state"]})
    train(step2, np.random.default_rng(3), 5)
    assert_same(snapshot(E2, W2, opt2), expected)


def _corrupt_cases(path, tmp_path):
    data = path.read_bytes()
    cases = {}
    cases["truncated"] = data[: len(data) // 2]
    flipped = bytearray(data)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("param/0.npy")
    pos = info.header_offset + 30 + len(info.filename) + 200  # inside the stored array
    flipped[pos] ^= 0xFF
    cases["bit flip"] = bytes(flipped)
    cases["garbage"] = b"not a zip file at all" * 10
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(3))
    cases["foreign"] = foreign.read_bytes()
    return cases


@pytest.mark.parametrize("case", ["truncated", "bit flip", "garbage", "foreign"])
def test_corrupt_file_raises_and_changes_nothing(tmp_path, case):
    E, W, opt, step = setup()
    train(step, np.random.default_rng(1), 5)
    path = tmp_path / "ckpt.npz"
    mg.save(path, [E, W], opt)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(_corrupt_cases(path, tmp_path)[case])
    train(step, np.random.default_rng(2), 3)
    before = snapshot(E, W, opt)
    with pytest.raises(CheckpointError):
        mg.load(bad, [E, W], opt)
    assert_same(snapshot(E, W, opt), before)


def test_mismatched_checkpoint_raises_and_changes_nothing(tmp_path):
    E, W, opt, step = setup()
    train(step, np.random.default_rng(1), 5)
    path = tmp_path / "ckpt.npz"
    mg.save(path, [E, W], opt)
    before = snapshot(E, W, opt)
    small = mg.shared(np.zeros((V - 1, D)), name="E")
    with pytest.raises(CheckpointError, match="shape"):
        mg.load(path, [small, W])
    with pytest.raises(CheckpointError, match="holds 2 parameters, 1"):
        mg.load(path, [E])
    E3, W3, rms, _ = setup(cls=mg.optim.RMSprop)
    with pytest.raises(CheckpointError, match="Adam"):
        mg.load(path, [E, W], rms)
    mg.save(tmp_path / "params_only.npz", [E, W])
    with pytest.raises(CheckpointError, match="no optimizer state"):
        mg.load(tmp_path / "params_only.npz", [E, W], opt)
    assert_same(snapshot(E, W, opt), before)
    with pytest.raises(FileNotFoundError):
        mg.load(tmp_path / "missing.npz", [E, W])


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, __meta__=np.array([{"format": "minigrad-checkpoint"}], dtype=object))
    E, W, opt, _ = setup()
    with pytest.raises(CheckpointError):
        mg.load(path, [E, W], opt)


def test_save_is_atomic(tmp_path, monkeypatch):
    E, W, opt, step = setup()
    path = tmp_path / "ckpt.npz"
    mg.save(path, [E, W], opt)
    good = path.read_bytes()
    train(step, np.random.default_rng(1), 2)

    def crash(*args, **kwargs):
        f = args[0]
        f.write(b"partial")
        raise KeyboardInterrupt("simulated crash mid-save")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        mg.save(path, [E, W], opt)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["ckpt.npz"]
