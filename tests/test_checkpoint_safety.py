"""``mg.save``/``mg.load`` against hostile and damaged files (issue 15, items 6, 11, 19, 20):
nothing is decompressed before names and declared sizes are checked, every damaged file
raises ``CheckpointError``, names and dtype ranges are checked, nothing is written before
everything is checked; saves clean up stale temporaries, follow symlinks and the umask."""
from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import minigrad as mg
from minigrad.optim.serialization import CheckpointError


def _setup(dtype="float64"):
    E = mg.shared(np.arange(12, dtype=dtype).reshape(6, 2) / 7, name="E")
    W = mg.shared(np.ones((2, 3), dtype=dtype), name="W")
    i = mg.ivector("i")
    cost = (E[i] @ W).sum()
    opt = mg.optim.Adam([E, W], 0.1, sparse="exact")
    step = mg.function([i], cost, updates=opt.updates(cost))
    step(np.array([1, 2], np.int32))
    return E, W, opt, step


def _snapshot(params, opt):
    return [p.get_value() for p in params], opt.state_dict()


def _assert_unchanged(before, params, opt):
    values, sd = before
    for p, v in zip(params, values):
        np.testing.assert_array_equal(p.get_value(), v)
    now = opt.state_dict()
    assert now["t"] == sd["t"]
    for k in sd["state"]:
        np.testing.assert_array_equal(now["state"][k], sd["state"][k])


def _members(path):
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _write_zip(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)


def _npy(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _with_meta(path, out, **changes):
    members = _members(path)
    meta = json.loads(str(np.load(io.BytesIO(members["__meta__.npy"]))))
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            meta[outer][inner] = value
        else:
            meta[key] = value
    members["__meta__.npy"] = _npy(np.array(json.dumps(meta)))
    _write_zip(out, members)


@pytest.fixture
def saved(tmp_path):
    E, W, opt, step = _setup()
    path = tmp_path / "ckpt.npz"
    mg.save(path, [E, W], opt)
    step(np.array([3, 4], np.int32))  # the live state now differs from the file
    return path, E, W, opt


# ------------------------------------------------------------------ item 19: zip bombs


class _CountingReads:
    """Counts the bytes zipfile hands out of decompressed members."""

    def __init__(self, monkeypatch):
        self.total = 0
        original = zipfile.ZipExtFile.read

        def read(stream, n=-1):
            data = original(stream, n)
            self.total += len(data)
            return data

        monkeypatch.setattr(zipfile.ZipExtFile, "read", read)


def test_extra_deflated_member_is_refused_before_decompressing(saved, tmp_path, monkeypatch):
    path, E, W, opt = saved
    bomb = tmp_path / "bomb.npz"
    members = _members(path)
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        with z.open("payload.npy", "w", force_zip64=True) as f:
            zeros = bytes(1 << 20)
            for _ in range(96):  # 96 MiB of zeros, ~100 KB on disk
                f.write(zeros)
    assert os.path.getsize(bomb) < 2 << 20
    counter = _CountingReads(monkeypatch)
    before = _snapshot([E, W], opt)
    with pytest.raises(CheckpointError, match="unexpected entries.*payload"):
        mg.load(bomb, [E, W], opt)
    assert counter.total == 0
    _assert_unchanged(before, [E, W], opt)


def test_declared_sizes_beyond_the_budget_are_refused_unread(saved, tmp_path, monkeypatch):
    """A member named like ours but declaring far more than the parameters need."""
    path, E, W, opt = saved
    bomb = tmp_path / "bomb.npz"
    members = _members(path)
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            if name != "opt/0.exp_avg.npy":
                z.writestr(name, data)
        with z.open("opt/0.exp_avg.npy", "w", force_zip64=True) as f:
            f.write(members["opt/0.exp_avg.npy"][:128])
            zeros = bytes(1 << 20)
            for _ in range(80):
                f.write(zeros)
    counter = _CountingReads(monkeypatch)
    with pytest.raises(CheckpointError, match="declares"):
        mg.load(bomb, [E, W], opt)
    assert counter.total == 0


@pytest.mark.parametrize("entry", ["param/0", "opt/0.exp_avg"])
def test_a_header_declaring_a_huge_shape_is_a_checkpoint_error(saved, tmp_path, entry):
    path, E, W, opt = saved
    members = _members(path)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)})
    members[f"{entry}.npy"] = b"\x93NUMPY\x01\x00" + header.getvalue()[8:]
    bad = tmp_path / "huge.npz"
    _write_zip(bad, members)
    before = _snapshot([E, W], opt)
    with pytest.raises(CheckpointError):
        mg.load(bad, [E, W], opt)
    _assert_unchanged(before, [E, W], opt)


def test_every_bit_flip_in_the_zip_directory_is_a_checkpoint_error(saved, tmp_path):
    path, E, W, opt = saved
    data = path.read_bytes()
    start = data.index(b"PK\x01\x02")  # the central directory runs to the end
    before = _snapshot([E, W], opt)
    bad = tmp_path / "flipped.npz"
    outcomes = {"refused": 0, "loaded": 0}
    for pos in range(start, len(data)):
        for bit in (0x01 << (pos % 8),):  # one bit per byte, every bit position in turn
            flipped = bytearray(data)
            flipped[pos] ^= bit
            bad.write_bytes(bytes(flipped))
            try:
                mg.load(bad, [E, W], opt)
            except CheckpointError:
                outcomes["refused"] += 1
                _assert_unchanged(before, [E, W], opt)
            else:  # a flip in a field nobody reads (a timestamp...): the true contents
                outcomes["loaded"] += 1
                saved_values = np.load(path)
                np.testing.assert_array_equal(E.get_value(), saved_values["param/0"])
                mg.load(path, [E, W], opt)
                before = _snapshot([E, W], opt)
    assert outcomes["refused"] > 0


def test_bit_flips_in_the_data_are_checkpoint_errors(saved, tmp_path):
    path, E, W, opt = saved
    data = path.read_bytes()
    bad = tmp_path / "flipped.npz"
    before = _snapshot([E, W], opt)
    for pos in range(0, data.index(b"PK\x01\x02"), 7):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        bad.write_bytes(bytes(flipped))
        try:
            mg.load(bad, [E, W], opt)
        except CheckpointError:
            _assert_unchanged(before, [E, W], opt)
        else:  # only a flip in a local header field nobody reads may load, and loads true data
            mg.load(path, [E, W], opt)
            before = _snapshot([E, W], opt)


# ----------------------------------------------------- item 6: check everything, then write


@pytest.mark.parametrize("t", [2**63, -1, 1.5, "7", True])
def test_an_impossible_step_count_is_refused_before_any_write(saved, tmp_path, t):
    path, E, W, opt = saved
    for key in ("t", "opt_entries.t"):
        bad = tmp_path / "t.npz"
        _with_meta(path, bad, **{key: t})
        before = _snapshot([E, W], opt)
        with pytest.raises(CheckpointError, match="step"):
            mg.load(bad, [E, W], opt)
        _assert_unchanged(before, [E, W], opt)


def test_a_read_only_parameter_is_refused_before_any_write(saved):
    path, E, W, opt = saved
    before = _snapshot([E, W], opt)
    ro = W.get_value()
    ro.flags.writeable = False
    W._value = ro  # behind set_value's back
    with pytest.raises(ValueError, match="W is read-only"):
        mg.load(path, [E, W], opt)
    W._value = np.array(ro)
    _assert_unchanged(before, [E, W], opt)


# ------------------------------------------------------- item 11: names and dtype ranges


def test_swapped_parameters_are_refused_unless_positional(tmp_path):
    A = mg.shared(np.zeros((3, 2)), name="A")
    B = mg.shared(np.ones((3, 2)), name="B")
    path = tmp_path / "ab.npz"
    mg.save(path, [A, B])
    A2 = mg.shared(np.full((3, 2), 5.0), name="A")
    B2 = mg.shared(np.full((3, 2), 5.0), name="B")
    with pytest.raises(CheckpointError, match="parameter 0 is 'A' in the file but 'B'"):
        mg.load(path, [B2, A2])
    np.testing.assert_array_equal(A2.get_value(), 5.0)
    mg.load(path, [A2, B2])
    np.testing.assert_array_equal(B2.get_value(), 1.0)
    mg.load(path, [B2, A2], positional=True)  # asked for: by position
    np.testing.assert_array_equal(B2.get_value(), 0.0)
    unnamed = mg.shared(np.zeros((3, 2)))
    mg.load(path, [unnamed, B2])  # an unnamed parameter matches any name


def test_values_overflowing_the_target_dtype_are_refused(tmp_path):
    big = mg.shared(np.array([[1e300, 1.0]]), name="P")
    path = tmp_path / "big.npz"
    mg.save(path, [big])
    small = mg.shared(np.zeros((1, 2), np.float32), name="P")
    with pytest.raises(CheckpointError, match="1e\\+300.*overflows float32"):
        mg.load(path, [small])
    np.testing.assert_array_equal(small.get_value(), 0.0)
    tiny = mg.shared(np.array([[1e-300, 1.0]]), name="P")  # underflow is benign: loads
    mg.save(path, [tiny])
    mg.load(path, [small])
    assert small.get_value()[0, 0] == 0.0


def test_round_trip_keeps_working(saved):
    path, E, W, opt = saved
    E2, W2, opt2, _ = _setup()
    meta = mg.load(path, [E2, W2], opt2)
    assert meta["names"] == ["E", "W"] and meta["t"] == 1 and meta["optimizer"] == "Adam"


# ------------------------------------------------------------- item 20: how files are saved


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_the_same_target_are_removed(tmp_path):
    E, W, opt, _ = _setup()
    path = tmp_path / "ckpt.npz"
    stale = tmp_path / f".ckpt.npz.tmp-{_dead_pid()}-abc.npz"
    live = tmp_path / f".ckpt.npz.tmp-{os.getppid()}-def.npz"  # a live process: kept
    other = tmp_path / f".other.npz.tmp-{_dead_pid()}-ghi.npz"  # another target: kept
    for f in (stale, live, other):
        f.write_bytes(b"partial")
    mg.save(path, [E, W], opt)
    assert not stale.exists() and live.exists() and other.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["ckpt.npz", live.name, other.name])


def test_saving_through_a_symlink_writes_its_target(tmp_path):
    E, W, opt, _ = _setup()
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    target = real_dir / "ckpt.npz"
    link = tmp_path / "latest.npz"
    link.symlink_to(target)
    mg.save(link, [E, W], opt)
    assert link.is_symlink() and target.is_file()
    mg.save(link, [E, W])  # and again, over the existing target
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert sorted(os.listdir(real_dir)) == ["ckpt.npz"]
    mg.load(link, [E, W])


def test_new_files_follow_the_umask_and_existing_ones_keep_their_mode(tmp_path):
    E, W, opt, _ = _setup()
    old = os.umask(0o027)
    try:
        mg.save(tmp_path / "a.npz", [E, W], opt)
        np.savez(tmp_path / "ref.npz", a=np.zeros(1))
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "a.npz").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "ref.npz").st_mode) == 0o640
    os.chmod(tmp_path / "a.npz", 0o604)
    mg.save(tmp_path / "a.npz", [E, W], opt)
    assert stat.S_IMODE(os.stat(tmp_path / "a.npz").st_mode) == 0o604
