"""A shard checkpoint as raw ``.npy`` files and a small checked manifest, read back by
memory-mapping them.

Why not one ``.npz``: reading one back means decompressing (or at least copying) every
member into fresh memory, and a restarted shard of a 10^7-row table spent 8.7-15.8 s
doing that (most of it allocating pages on this VM). Here each array is its own ``.npy``
file and a restore maps it *copy-on-write* (``np.load(mmap_mode="c")``): the rows stay in
the page cache, a page is copied only when a push writes it, and the restore costs the
checksum pass (a few GB/s) instead of an allocation and a copy per byte.

Layout, for a checkpoint named ``<dir>/<name>.json`` (the manifest):

* ``<dir>/<name>.<gen>-<pid>.<key>.npy``: one file per array of generation ``gen``,
  written by process ``pid`` (never rewritten in place: a mapped file stays valid);
* ``<name>.json``: JSON with the format, the generation, and per array (of the base and
  of each delta) its file, dtype, shape, byte size and CRC-32 of each 64 MiB chunk, plus
  the caller's ``meta``. Written
  last, to a temporary file that is fsynced and renamed over the old manifest
  (``os.replace``): a crash at any moment leaves the previous checkpoint whole.

A checkpoint is a *base* (every array whole, :func:`write`) followed by *deltas*
(:func:`append`: the rows of some arrays that changed since, plus small arrays whole), so
that checkpointing a large table whose pushes touch a few thousand rows writes those rows,
not the table. :func:`read` maps the base and writes the deltas' rows over it in order
(private pages); the writer decides when a new base is due (``shard.py``).

After a new manifest is in place the files it does not name (the previous generation,
and whatever a killed writer left) are removed. A damaged checkpoint (bad JSON, a missing
or truncated file, a header that disagrees with the manifest, a flipped bit, a file name
that leaves the directory, a dtype holding objects) raises
:class:`~minigrad.optim.serialization.CheckpointError` naming the file; nothing is ever
unpickled.
"""
from __future__ import annotations

import glob
import json
import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from minigrad.optim.serialization import CheckpointError, fsync_directory

FORMAT = "minigrad-shard-files"
VERSION = 1
CHUNK = 64 << 20  # bytes per CRC: chunks are checked in parallel threads
MAX_MANIFEST_BYTES = 16 << 20
_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
_THREADS = max(1, min(4, os.cpu_count() or 1))


def manifest_path(path):
    """The manifest of checkpoint ``path`` (given with or without ``.json``)."""
    path = os.fspath(path)
    return path if path.endswith(".json") else path + ".json"


def exists(path):
    return os.path.exists(manifest_path(path))


def _stem(manifest):
    return manifest[:-len(".json")]


def _file_key(key):
    """``param/0`` -> ``param-0``: an array name as a file-name part (checked)."""
    part = key.replace("/", "-")
    if not _KEY.fullmatch(part):
        raise ValueError(f"cannot checkpoint array {key!r}: use letters, digits, '/_.-'")
    return part


def _crcs(array):
    """CRC-32 of each ``CHUNK`` bytes of ``array``'s data (C order)."""
    flat = memoryview(np.ascontiguousarray(array).reshape(-1)).cast("B")
    offsets = range(0, flat.nbytes, CHUNK)
    if len(offsets) <= 1:
        return [zlib.crc32(flat)]
    with ThreadPoolExecutor(_THREADS) as pool:  # zlib releases the GIL on big buffers
        return list(pool.map(lambda o: zlib.crc32(flat[o:o + CHUNK]), offsets))


def write(path, arrays, meta, generation):
    """Write ``arrays`` (name -> ndarray) and ``meta`` (JSON-able) as a full generation
    ``generation`` of checkpoint ``path`` (no deltas); returns the manifest's path.

    Data files first (each fsynced), then the manifest atomically, then the files no
    longer named are removed. On any error the previous checkpoint stays the valid one.
    """
    manifest = manifest_path(path)

    def build(written):
        entries = {key: _write_array(manifest, generation, key, value, written)
                   for key, value in arrays.items()}
        return {"format": FORMAT, "version": VERSION, "generation": int(generation),
                "chunk": CHUNK, "arrays": entries, "deltas": [], "meta": meta}

    return _publish(manifest, build)


def append(path, rows, whole, meta, generation):
    """Add generation ``generation`` to checkpoint ``path`` as a *delta* on the newest
    one: ``rows`` maps an array name to ``(ids, values)`` (its rows ``ids`` now hold
    ``values``), ``whole`` names arrays replaced entirely (small ones); ``meta`` replaces
    the metadata. Only these bytes are written, so a checkpoint of a few thousand changed
    rows of a 10^7-row table costs milliseconds, not a rewrite of the table.
    """
    manifest = manifest_path(path)
    doc = _read_manifest(manifest)

    def build(written):
        delta = {"generation": int(generation), "rows": {}, "whole": {}}
        for key, (ids, values) in rows.items():
            if key not in doc["arrays"]:
                raise ValueError(f"a delta for {key!r}, which the checkpoint does not hold")
            delta["rows"][key] = {
                "ids": _write_array(manifest, generation, f"{key}.ids",
                                    np.asarray(ids, dtype=np.int64), written),
                "values": _write_array(manifest, generation, f"{key}.rows", values, written)}
        for key, value in whole.items():
            delta["whole"][key] = _write_array(manifest, generation, key, value, written)
        return dict(doc, generation=int(generation), deltas=doc["deltas"] + [delta], meta=meta)

    return _publish(manifest, build)


def _publish(manifest, build):
    """Write a generation's files (``build(written)`` records each one in ``written`` and
    returns the new manifest document), then rename the manifest into place: the one
    atomic step. On any failure the files written so far are removed and the previous
    checkpoint stands; on success the files no manifest names any more go."""
    written = []
    try:
        doc = build(written)
        _replace_manifest(manifest, doc)
    except BaseException:
        _remove_files(written)
        raise
    remove_unreferenced(manifest, keep=_named_files(doc))
    return manifest


def _write_array(manifest, generation, key, value, written):
    """One ``.npy`` file of generation ``generation`` (fsynced); its manifest entry."""
    arr = np.ascontiguousarray(value)
    if arr.dtype.hasobject:
        raise ValueError(f"cannot checkpoint array {key!r} of dtype {arr.dtype}")
    file = f"{_stem(manifest)}.{int(generation)}-{os.getpid()}.{_file_key(key)}.npy"
    written.append(file)
    with open(file, "wb") as f:
        np.lib.format.write_array(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"file": os.path.basename(file), "dtype": arr.dtype.str, "shape": list(arr.shape),
            "nbytes": int(arr.nbytes), "crc32": _crcs(arr)}


def _replace_manifest(manifest, doc):
    tmp = f"{manifest}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, manifest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_directory(os.path.dirname(manifest) or ".")


def _remove_files(files):
    for file in files:
        if os.path.exists(file):
            os.remove(file)


def _entries(doc):
    """Every file entry of a manifest: the base's, then each delta's."""
    yield from doc["arrays"].items()
    for delta in doc["deltas"]:
        for key, pair in delta["rows"].items():
            yield f"{key}.ids", pair["ids"]
            yield f"{key}.rows", pair["values"]
        yield from delta["whole"].items()


def _named_files(doc):
    return {entry["file"] for _, entry in _entries(doc)}


class Checkpoint(NamedTuple):
    arrays: dict  # name -> ndarray (the base mapped copy-on-write, deltas applied)
    meta: object
    generation: int
    deltas: int  # deltas applied on top of the base
    delta_rows: int  # rows those deltas wrote, all arrays together


def read(path, expected=None):
    """The newest state of checkpoint ``path`` (a :class:`Checkpoint`): the base arrays
    mapped copy-on-write, then every delta's rows written over them in order.

    ``expected``: optional ``{name: (shape, dtype)}`` every listed array must match.
    Every file is checked (name, size, header, CRC, delta ids in range) before any delta
    is applied or anything returned.
    """
    manifest = manifest_path(path)
    doc = _read_manifest(manifest)
    directory = os.path.dirname(manifest) or "."
    mapped = {}
    for key, entry in _entries(doc):
        mapped[(id(entry), key)] = _map(directory, manifest, key, entry)
    _check_crcs(manifest, doc, mapped)
    arrays = {key: mapped[(id(e), key)] for key, e in doc["arrays"].items()}
    plans, delta_rows = [], 0
    for delta in doc["deltas"]:
        for key, pair in delta["rows"].items():
            ids = mapped[(id(pair["ids"]), f"{key}.ids")]
            values = mapped[(id(pair["values"]), f"{key}.rows")]
            base = arrays.get(key)
            file = os.path.join(directory, pair["ids"]["file"])
            if base is None or ids.ndim != 1 or ids.dtype != np.int64:
                raise CheckpointError(f"{file}: not the row ids of an array of the checkpoint")
            if values.shape != ids.shape + base.shape[1:] or values.dtype != base.dtype:
                raise CheckpointError(f"{os.path.join(directory, pair['values']['file'])}: "
                                      f"rows {values.shape} {values.dtype} do not fit {key} "
                                      f"{base.shape} {base.dtype}")
            if ids.shape[0] and (int(ids.min()) < 0 or int(ids.max()) >= base.shape[0]):
                raise CheckpointError(f"{file}: row id out of range for {key} "
                                      f"({base.shape[0]} rows)")
            plans.append((key, ids, values))
            delta_rows += int(ids.shape[0])
        for key, entry in delta["whole"].items():
            plans.append((key, None, mapped[(id(entry), key)]))
    for key, ids, values in plans:
        if ids is None:
            arrays[key] = values
        else:
            arrays[key][ids] = values
    for key, (shape, dtype) in (expected or {}).items():
        got = arrays.get(key)
        if got is None or got.shape != tuple(shape) or got.dtype != np.dtype(dtype):
            raise CheckpointError(
                f"{manifest}: {key} is {None if got is None else (got.shape, str(got.dtype))}"
                f", expected {(tuple(shape), str(np.dtype(dtype)))}")
    return Checkpoint(arrays, doc["meta"], doc["generation"], len(doc["deltas"]), delta_rows)


def _read_manifest(manifest):
    try:
        size = os.path.getsize(manifest)
        if size > MAX_MANIFEST_BYTES:
            raise CheckpointError(f"{manifest}: manifest of {size} bytes is too large")
        with open(manifest) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise
    except CheckpointError:
        raise
    except (OSError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{manifest}: unreadable checkpoint manifest: "
                              f"{type(err).__name__}: {err}") from err
    ok = (isinstance(doc, dict) and doc.get("format") == FORMAT
          and doc.get("version") == VERSION and isinstance(doc.get("arrays"), dict)
          and isinstance(doc.get("generation"), int) and doc.get("chunk") == CHUNK
          and isinstance(doc.get("deltas"), list)
          and all(isinstance(d, dict) and isinstance(d.get("rows"), dict)
                  and isinstance(d.get("whole"), dict)
                  and all(isinstance(p, dict) and {"ids", "values"} <= set(p)
                          for p in d["rows"].values()) for d in doc["deltas"]))
    if not ok:
        raise CheckpointError(f"{manifest}: not a {FORMAT} version {VERSION} manifest")
    return doc


def _map(directory, manifest, key, entry):
    """One array file, mapped copy-on-write, its name, size and header checked."""
    try:
        name, dtype = entry["file"], np.dtype(entry["dtype"])
        shape, nbytes = tuple(int(n) for n in entry["shape"]), int(entry["nbytes"])
        crcs = [int(c) for c in entry["crc32"]]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{manifest}: malformed entry for {key!r}: {err}") from None
    if not isinstance(name, str) or os.path.basename(name) != name or not _KEY.fullmatch(
            name) or not name.startswith(os.path.basename(_stem(manifest)) + "."):
        raise CheckpointError(f"{manifest}: entry {key!r} names a file outside the "
                              f"checkpoint: {name!r}")
    if dtype.hasobject or dtype.kind not in "biuf":
        raise CheckpointError(f"{manifest}: entry {key!r} has dtype {dtype} (not allowed)")
    want_chunks = max(1, -(-nbytes // CHUNK))
    if len(crcs) != want_chunks or nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise CheckpointError(f"{manifest}: entry {key!r} is inconsistent (shape {shape}, "
                              f"{nbytes} bytes, {len(crcs)} checksums)")
    file = os.path.join(directory, name)
    try:
        # an empty array cannot be mapped (mmap of zero bytes): read it
        mapped = np.load(file, mmap_mode="c" if nbytes else None, allow_pickle=False)
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing (named by {manifest})") from None
    except (OSError, ValueError, EOFError) as err:
        raise CheckpointError(f"{file}: not a readable .npy file (truncated or corrupt?): "
                              f"{err}") from None
    if not isinstance(mapped, np.memmap) and nbytes:
        raise CheckpointError(f"{file}: could not be memory-mapped")
    if mapped.shape != shape or mapped.dtype != dtype:
        raise CheckpointError(f"{file}: holds {mapped.shape} {mapped.dtype}, the manifest "
                              f"says {shape} {dtype}")
    offset = getattr(mapped, "offset", None)
    if offset is not None and os.path.getsize(file) != offset + nbytes:
        raise CheckpointError(f"{file}: {os.path.getsize(file)} bytes, expected "
                              f"{offset + nbytes} (truncated or padded)")
    return mapped.view(np.ndarray) if isinstance(mapped, np.memmap) else np.array(mapped)


def _check_crcs(manifest, doc, mapped):
    jobs = []
    for key, entry in _entries(doc):
        arr = mapped[(id(entry), key)]
        flat = memoryview(arr.reshape(-1)).cast("B") if arr.size else b""
        for i, crc in enumerate(entry["crc32"]):
            jobs.append((entry["file"], i, flat, crc))

    def bad(job):
        file, i, flat, crc = job
        return None if zlib.crc32(flat[i * CHUNK:(i + 1) * CHUNK]) == crc else file

    with ThreadPoolExecutor(_THREADS) as pool:
        for file in pool.map(bad, jobs):
            if file is not None:
                raise CheckpointError(f"{os.path.join(os.path.dirname(manifest) or '.', file)}"
                                      ": checksum mismatch: the data are corrupt")


def remove_unreferenced(path, keep=None):
    """Remove the data files and manifest temporaries of checkpoint ``path`` that its
    manifest does not name (``keep``: the names it does, read from it when ``None``)."""
    manifest = manifest_path(path)
    if keep is None:
        try:
            keep = _named_files(_read_manifest(manifest))
        except (FileNotFoundError, CheckpointError):
            keep = set()
    stem = glob.escape(_stem(manifest))
    for file in glob.glob(f"{stem}.*.npy") + glob.glob(f"{glob.escape(manifest)}.tmp-*"):
        if os.path.basename(file) not in keep:
            try:
                os.remove(file)
            except FileNotFoundError:
                pass


def remove(path):
    """Remove checkpoint ``path`` entirely (manifest, data files, temporaries)."""
    manifest = manifest_path(path)
    if os.path.exists(manifest):
        os.remove(manifest)
    remove_unreferenced(manifest, keep=set())
