"""``mg.save`` / ``mg.load``: parameters and optimizer state in one ``.npz`` (never pickle).

Layout: ``param/<i>`` arrays, ``opt/<i>.<state>`` arrays, and ``__meta__``, a 0-d string
array holding JSON: format name and version, parameter names, optimizer class,
hyperparameters and step, and a SHA-256 checksum over every array (name, dtype, shape,
bytes). Loading checks everything (readable zip, format, version, checksum, counts, shapes)
before it writes anything, so a truncated, corrupt, foreign or mismatched file raises
``CheckpointError`` and leaves parameters and optimizer untouched. Saving writes a temporary
file in the same directory, fsyncs it and renames it over the target: a crash mid-save
leaves the previous file intact.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

FORMAT = "minigrad-checkpoint"
VERSION = 1
_META = "__meta__"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded into the given parameters/optimizer."""


def _checksum(arrays):
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _params(params):
    return list(params) if isinstance(params, (list, tuple)) else [params]


def save(path, params, opt=None):
    """Write ``params`` (and ``opt``'s state) to ``path`` atomically (flushes first)."""
    params = _params(params)
    arrays = {f"param/{i}": np.asarray(_host(p.get_value())) for i, p in enumerate(params)}
    meta = {"format": FORMAT, "version": VERSION, "names": [p.name for p in params],
            "optimizer": None}
    if opt is not None:
        sd = opt.state_dict()
        arrays.update({f"opt/{k}": v for k, v in sd["state"].items()})
        meta.update(optimizer=sd["optimizer"], opt_version=sd["version"], hyper=sd["hyper"],
                    t=sd["t"], steps=sd["steps"])
    meta["checksum"] = _checksum(arrays)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, **{_META: np.array(json.dumps(meta))})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        raise CheckpointError(f"{path}: not a readable .npz checkpoint (truncated or "
                              f"corrupt?): {err}") from err
    if _META not in arrays:
        raise CheckpointError(f"{path}: not a minigrad checkpoint (no {_META} entry)")
    try:
        meta = json.loads(str(arrays.pop(_META)))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint metadata: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a minigrad checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else meta!r})")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta.get('version')!r} is not "
                              f"supported (this minigrad reads up to {VERSION})")
    if meta.get("checksum") != _checksum(arrays):
        raise CheckpointError(f"{path}: checksum mismatch: the arrays are corrupt")
    return arrays, meta


def load(path, params, opt=None):
    """Read ``path`` into ``params`` (and ``opt``); all checks pass before anything is
    written. Returns the checkpoint metadata (names, optimizer, step)."""
    params = _params(params)
    arrays, meta = _read(path)
    n = sum(1 for k in arrays if k.startswith("param/"))
    if n != len(params):
        raise CheckpointError(f"{path}: holds {n} parameters, {len(params)} were given")
    new = []
    for i, p in enumerate(params):
        arr = arrays.get(f"param/{i}")
        if arr is None:
            raise CheckpointError(f"{path}: parameter {i} is missing")
        current = p.value
        if arr.shape != tuple(current.shape):
            raise CheckpointError(f"{path}: parameter {i} ({p.name}) has shape {arr.shape} in "
                                  f"the file, {tuple(current.shape)} here")
        if arr.dtype.kind != "f":
            raise CheckpointError(f"{path}: parameter {i} has dtype {arr.dtype}")
        new.append(arr)
    state = None
    if opt is not None:
        if meta.get("optimizer") is None:
            raise CheckpointError(f"{path}: holds no optimizer state")
        state = {"optimizer": meta["optimizer"], "version": meta.get("opt_version", 1),
                 "t": meta.get("t"), "steps": meta.get("steps"),
                 "state": {k[4:]: v for k, v in arrays.items() if k.startswith("opt/")}}
        try:
            opt.check_state_dict(state)
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{path}: {err}") from err
    # everything checked: write (a flush runs first through the hooks of set_value)
    if state is not None:
        opt.load_state_dict(state)
    for p, arr in zip(params, new):
        p.flush()
        if isinstance(p.value, np.ndarray):  # in place: the table may be in shared memory
            p.value[...] = arr
        else:
            p.set_value(arr.astype(p.type.dtype, copy=False))
    return {k: meta.get(k) for k in ("names", "optimizer", "t", "hyper")}


def _host(a):
    return a.get() if hasattr(a, "__cuda_array_interface__") else a
