"""Shard checkpoints as raw ``.npy`` files + a checked manifest (no Ray needed).

``minigrad/distributed/checkpoint_files.py``: written atomically (data files, then the
manifest renamed into place), read back memory-mapped copy-on-write, every damage
(truncation, a flipped bit, a bad manifest, a missing or foreign file, an object dtype)
a ``CheckpointError`` naming the file, and no file left that the manifest does not name.
"""
from __future__ import annotations

import functools
import json
import os
import pickle

import numpy as np
import pytest

import minigrad as mg
from minigrad.distributed import checkpoint_files as cf
from minigrad.distributed.shard import Shard
from minigrad.optim.serialization import CheckpointError


def _arrays(seed=0, rows=1000):
    r = np.random.default_rng(seed)
    return {"param/0": r.normal(size=(rows, 8)).astype(np.float32),
            "opt/0/0.sum": r.random((rows, 8)),
            "applied": r.random(37) < 0.5, "empty": np.zeros((0, 3))}


def _files(d):
    return sorted(os.listdir(d))


def test_round_trip_maps_copy_on_write(tmp_path):
    path = str(tmp_path / "shard-0.json")
    want = _arrays()
    cf.write(path, want, {"note": "x"}, generation=1)
    got, meta, gen, deltas, _ = cf.read(path)
    assert meta == {"note": "x"} and gen == 1 and deltas == 0
    for k, v in want.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v)
    big = got["opt/0/0.sum"]
    assert isinstance(big.base, np.memmap) or isinstance(big.base.base, np.memmap)
    assert big.flags.writeable and big.flags.c_contiguous
    big[3] = -1.0  # a private copy of that page: the file is unchanged
    assert np.array_equal(cf.read(path).arrays["opt/0/0.sum"], want["opt/0/0.sum"])


def test_only_the_newest_generation_is_kept(tmp_path):
    path = str(tmp_path / "shard-0.json")
    for gen in (1, 2, 3):
        cf.write(path, _arrays(gen), {}, generation=gen)
    names = _files(tmp_path)
    assert "shard-0.json" in names and len(names) == 1 + len(_arrays())
    assert all(n == "shard-0.json" or n.startswith("shard-0.3-") for n in names)
    got = cf.read(path)
    assert got.generation == 3 and np.array_equal(got.arrays["param/0"], _arrays(3)["param/0"])
    cf.remove(path)
    assert _files(tmp_path) == []


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "shard-0.json")
    cf.write(path, _arrays(1), {"gen": 1}, generation=1)
    before = _files(tmp_path)
    real, calls = np.lib.format.write_array, []

    def failing(f, arr, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(f, arr, **kw)

    monkeypatch.setattr(np.lib.format, "write_array", failing)
    with pytest.raises(OSError, match="disk full"):
        cf.write(path, _arrays(2), {"gen": 2}, generation=2)
    monkeypatch.undo()
    assert _files(tmp_path) == before  # the half-written generation is gone
    got = cf.read(path)
    assert got.meta == {"gen": 1} and np.array_equal(got.arrays["param/0"], _arrays(1)["param/0"])


def test_leftovers_of_a_killed_writer_are_removed(tmp_path):
    path = str(tmp_path / "shard-0.json")
    cf.write(path, _arrays(1), {}, generation=1)
    (tmp_path / "shard-0.2-99999.param-0.npy").write_bytes(b"half")
    (tmp_path / "shard-0.json.tmp-99999").write_text("{")
    (tmp_path / "shard-1.json").write_text("{}")  # another shard's: not ours to remove
    cf.write(path, _arrays(2), {}, generation=2)
    names = _files(tmp_path)
    assert "shard-0.2-99999.param-0.npy" not in names and "shard-0.json.tmp-99999" not in names
    assert "shard-1.json" in names


def _entry_file(path, key):
    with open(path) as f:
        return os.path.join(os.path.dirname(path), json.load(f)["arrays"][key]["file"])


def _edit_manifest(path, edit):
    with open(path) as f:
        doc = json.load(f)
    edit(doc)
    with open(path, "w") as f:
        json.dump(doc, f)


@pytest.mark.parametrize("damage, match", [
    ("truncate", "truncated|not a readable"),
    ("flip", "checksum mismatch"),
    ("missing", "missing"),
    ("pad", "truncated or padded"),
])
def test_damaged_data_file_raises_naming_it(tmp_path, damage, match):
    path = str(tmp_path / "shard-0.json")
    cf.write(path, _arrays(), {}, generation=1)
    file = _entry_file(path, "opt/0/0.sum")
    if damage == "truncate":
        with open(file, "r+b") as f:
            f.truncate(os.path.getsize(file) - 100)
    elif damage == "flip":
        with open(file, "r+b") as f:
            f.seek(os.path.getsize(file) - 5)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0x10]))
    elif damage == "missing":
        os.remove(file)
    else:
        with open(file, "ab") as f:
            f.write(b"\0" * 8)
    with pytest.raises(CheckpointError, match=match) as err:
        cf.read(path)
    assert os.path.basename(file) in str(err.value)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["arrays"]["param/0"].update(file="../etc.npy"), "outside the checkpoint"),
    (lambda d: d["arrays"]["param/0"].update(file="other.1-1.param-0.npy"),
     "outside the checkpoint"),
    (lambda d: d["arrays"]["param/0"].update(shape=[10, 8]), "inconsistent|holds"),
    (lambda d: d["arrays"]["param/0"].update(dtype="|O"), "not allowed"),
    (lambda d: d.update(format="something"), "not a minigrad-shard-files"),
    (lambda d: d["arrays"]["param/0"].pop("crc32"), "malformed entry"),
])
def test_bad_manifest_raises_naming_it(tmp_path, edit, match):
    path = str(tmp_path / "shard-0.json")
    cf.write(path, _arrays(), {}, generation=1)
    _edit_manifest(path, edit)
    with pytest.raises(CheckpointError, match=match) as err:
        cf.read(path)
    assert "shard-0" in str(err.value)


def test_unreadable_manifest_and_object_dtype_file(tmp_path):
    path = str(tmp_path / "shard-0.json")
    cf.write(path, _arrays(), {}, generation=1)
    file = _entry_file(path, "param/0")
    np.save(file, np.array([{"a": 1}], dtype=object), allow_pickle=True)  # a pickle inside
    with pytest.raises(CheckpointError, match=os.path.basename(file)):
        cf.read(path)
    with open(path, "w") as f:
        f.write('{"format": ')
    with pytest.raises(CheckpointError, match="unreadable checkpoint manifest"):
        cf.read(path)


def test_restored_shard_equals_the_checkpointed_one_and_maps_its_tables(tmp_path):
    """A restarted shard's tables are the checkpoint's files mapped copy-on-write (no
    copy), bit for bit what it held; pushes after the restore write private pages only."""
    r = np.random.default_rng(4)
    slices = [r.normal(size=(200, 4)).astype(np.float32), np.float64(0.5)]
    factory = pickle.dumps(functools.partial(mg.optim.Adam, lr=0.05, sparse="lazy"))
    file = str(tmp_path / "shard-0.json")
    first = Shard("shard-0", slices, ["E", "b"], factory, 10, 2, file)
    for b in range(4):
        ids = np.unique(r.integers(0, 200, 30))
        first.push(0, b, [(ids, r.normal(size=(ids.size, 4)).astype(np.float32)), 1.0])
    want = [p.get_value() for p in first.params]
    want_state = [o.state_dict() for o in first.opts]
    back = Shard("shard-0", slices, ["E", "b"], factory, 10, 2, file)
    assert back.restored_from == file and back.generation == first.generation
    table = back.params[0].get_value(borrow=True)
    base = table
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)  # mapped, not read into fresh memory
    for p, v in zip(back.params, want):
        assert np.array_equal(p.get_value(), v)
    for o, sd in zip(back.opts, want_state):
        got = o.state_dict()
        assert got["t"] == sd["t"] and got["steps"] == sd["steps"]
        assert all(np.array_equal(got["state"][k], sd["state"][k]) for k in sd["state"])
    ids = np.array([1, 5])
    back.push(0, 7, [(ids, np.ones((2, 4), np.float32)), 1.0])
    again = Shard("shard-0", slices, ["E", "b"], factory, 10, 2, file)
    assert np.array_equal(again.params[0].get_value(), want[0])  # the files did not change
    bad = [np.zeros((200, 4), np.float32), np.float64(0.5)]
    with pytest.raises(CheckpointError, match="is not a checkpoint of shard-1"):
        Shard("shard-1", bad, ["E", "b"], factory, 10, 2, str(tmp_path / "shard-0.json"))


def _delta_checkpoint(tmp_path):
    """A base and two deltas; returns the path and the arrays the newest state holds."""
    path = str(tmp_path / "shard-0.json")
    want = _arrays(1)
    cf.write(path, want, {"gen": 1}, generation=1)
    r = np.random.default_rng(3)
    for gen, ids in ((2, np.array([5, 1, 900])), (3, np.array([1, 7]))):
        rows = {k: (ids, r.normal(size=(ids.size, 8)).astype(want[k].dtype))
                for k in ("param/0", "opt/0/0.sum")}
        applied = r.random(37) < 0.5
        cf.append(path, rows, {"applied": applied}, {"gen": gen}, generation=gen)
        for k, (i, v) in rows.items():
            want[k][i] = v
        want["applied"] = applied
    return path, want


def test_deltas_write_only_changed_rows_and_read_back_in_order(tmp_path):
    path, want = _delta_checkpoint(tmp_path)
    got = cf.read(path)
    assert got.generation == 3 and got.deltas == 2 and got.delta_rows == 2 * 5
    assert got.meta == {"gen": 3}
    for k, v in want.items():
        assert np.array_equal(got.arrays[k], v), k
    with open(path) as f:
        doc = json.load(f)
    named = {e["file"] for e in doc["arrays"].values()} | {
        p[s]["file"] for d in doc["deltas"] for p in d["rows"].values() for s in ("ids", "values")
    } | {e["file"] for d in doc["deltas"] for e in d["whole"].values()}
    assert set(_files(tmp_path)) == named | {"shard-0.json"}  # the replaced bitmap is gone
    sizes = [os.path.getsize(tmp_path / p["values"]["file"])
             for d in doc["deltas"] for p in d["rows"].values()]
    assert max(sizes) < 1000  # a few rows, not the table
    cf.write(path, _arrays(4), {}, generation=4)  # a new base drops every delta
    assert cf.read(path).deltas == 0 and len(_files(tmp_path)) == 1 + len(_arrays())


@pytest.mark.parametrize("damage, match", [
    ("ids out of range", "row id out of range"),
    ("flip", "checksum mismatch"),
    ("rows shape", "do not fit"),
])
def test_damaged_delta_raises_naming_its_file(tmp_path, damage, match):
    path, _ = _delta_checkpoint(tmp_path)
    with open(path) as f:
        doc = json.load(f)
    pair = doc["deltas"][0]["rows"]["param/0"]
    if damage == "flip":
        file = tmp_path / pair["values"]["file"]
        data = bytearray(file.read_bytes())
        data[-3] ^= 0x01
        file.write_bytes(bytes(data))
        named = pair["values"]["file"]
    else:
        if damage == "ids out of range":
            arr, entry = np.array([5, 1, 1000]), pair["ids"]
            named = entry["file"]
        else:
            arr, entry = np.zeros((3, 7), np.float32), pair["values"]
            named = entry["file"]
        np.save(tmp_path / entry["file"], arr)
        entry.update(dtype=arr.dtype.str, shape=list(arr.shape), nbytes=arr.nbytes,
                     crc32=cf._crcs(arr))
        with open(path, "w") as f:
            json.dump(doc, f)
    with pytest.raises(CheckpointError, match=match) as err:
        cf.read(path)
    assert named in str(err.value)


def _pushes(shard, r, n, start=0, rows=1000):
    for b in range(start, start + n):
        ids = np.unique(r.integers(0, rows, 6))
        shard.push(0, b, [(ids, r.normal(size=(ids.size, 256)).astype(np.float32))])


def _manifest_deltas(file):
    with open(file) as f:
        return len(json.load(f)["deltas"])


@pytest.mark.parametrize("opt, deltas", [
    (functools.partial(mg.optim.Adam, lr=0.05, sparse="lazy"), True),
    (functools.partial(mg.optim.Adagrad, lr=0.05), True),
    # exact momentum moves rows no push names (the catch-up): always a full checkpoint
    (functools.partial(mg.optim.Momentum, lr=0.05, momentum=0.9, sparse="exact"), False),
])
def test_shard_checkpoints_deltas_when_only_pushes_change_rows(tmp_path, opt, deltas):
    """Rows of 1 KiB (4 per page), <= 12 rows per checkpoint: deltas until their rows lie
    on half of the table's 250 pages, then a new base."""
    from minigrad.distributed.shard import DELTA_PAGES

    assert DELTA_PAGES == 0.5
    r = np.random.default_rng(6)
    slices = [r.normal(size=(1000, 256)).astype(np.float32)]
    file = str(tmp_path / "shard-0.json")
    shard = Shard("shard-0", slices, ["E"], pickle.dumps(opt), 80, 2, file)
    _pushes(shard, r, 10)  # 5 checkpoints: a base, then 4 deltas (<= 48 of 250 pages)
    assert shard.generation == 5 and _manifest_deltas(file) == (4 if deltas else 0)
    assert shard.counters.get("delta_checkpoints", 0) == (4 if deltas else 0)
    want = shard.params[0].get_value()
    want_state = shard.opts[0].state_dict()
    back = Shard("shard-0", slices, ["E"], pickle.dumps(opt), 80, 2, file)
    assert back.generation == 5
    assert np.array_equal(back.params[0].get_value(), want)
    got = back.opts[0].state_dict()
    assert got["t"] == want_state["t"] and got["steps"] == want_state["steps"]
    assert all(np.array_equal(got["state"][k], v) for k, v in want_state["state"].items())
    assert np.flatnonzero(back.applied).tolist() == list(range(10))
    _pushes(back, r, 2, start=10)
    assert _manifest_deltas(file) == 0  # a restored shard writes a new base first
    _pushes(back, r, 68, start=12)  # 34 more: deltas, a new base past 125 pages, deltas
    n = _manifest_deltas(file)
    assert (0 < n < 34) == deltas and (n == 0) != deltas
    again = Shard("shard-0", slices, ["E"], pickle.dumps(opt), 80, 2, file)
    assert np.array_equal(again.params[0].get_value(), back.params[0].get_value())
    assert np.flatnonzero(again.applied).tolist() == list(range(80))
