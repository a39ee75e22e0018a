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
* ``<name>.json``: JSON with the format, the generation, and per array its file, dtype,
  shape, byte size and CRC-32 of each 64 MiB chunk, plus the caller's ``meta``. Written
  last, to a temporary file that is fsynced and renamed over the old manifest
  (``os.replace``): a crash at any moment leaves the previous checkpoint whole.

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

import numpy as np

from minigrad.optim.serialization import CheckpointError

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
    """Write ``arrays`` (name -> ndarray) and ``meta`` (JSON-able) as generation
    ``generation`` of checkpoint ``path``; returns the manifest's path.

    Data files first (each fsynced), then the manifest atomically, then the files no
    longer named are removed. On any error the previous checkpoint stays the valid one.
    """
    manifest = manifest_path(path)
    directory, stem = os.path.dirname(manifest) or ".", _stem(manifest)
    tag = f"{int(generation)}-{os.getpid()}"
    entries, written = {}, []
    try:
        for key, value in arrays.items():
            arr = np.ascontiguousarray(value)
            if arr.dtype.hasobject:
                raise ValueError(f"cannot checkpoint array {key!r} of dtype {arr.dtype}")
            file = f"{stem}.{tag}.{_file_key(key)}.npy"
            written.append(file)
            with open(file, "wb") as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            entries[key] = {"file": os.path.basename(file), "dtype": arr.dtype.str,
                            "shape": list(arr.shape), "nbytes": int(arr.nbytes),
                            "crc32": _crcs(arr)}
        doc = {"format": FORMAT, "version": VERSION, "generation": int(generation),
               "chunk": CHUNK, "arrays": entries, "meta": meta}
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
    except BaseException:
        for file in written:
            if os.path.exists(file):
                os.remove(file)
        raise
    _fsync_directory(directory)
    remove_unreferenced(manifest, keep={e["file"] for e in entries.values()})
    return manifest


def read(path, expected=None):
    """``(arrays, meta, generation)`` of checkpoint ``path``; arrays mapped copy-on-write.

    ``expected``: optional ``{name: (shape, dtype)}`` every listed array must match.
    Every file is checked (size, header, CRC) before anything is returned.
    """
    manifest = manifest_path(path)
    doc = _read_manifest(manifest)
    directory = os.path.dirname(manifest) or "."
    arrays = {}
    for key, entry in doc["arrays"].items():
        arrays[key] = _map(directory, manifest, key, entry)
    for key, (shape, dtype) in (expected or {}).items():
        got = arrays.get(key)
        if got is None or got.shape != tuple(shape) or got.dtype != np.dtype(dtype):
            raise CheckpointError(
                f"{manifest}: {key} is {None if got is None else (got.shape, str(got.dtype))}"
                f", expected {(tuple(shape), str(np.dtype(dtype)))}")
    _check_crcs(manifest, doc, arrays)
    return arrays, doc["meta"], doc["generation"]


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
          and isinstance(doc.get("generation"), int) and doc.get("chunk") == CHUNK)
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


def _check_crcs(manifest, doc, arrays):
    jobs = []
    for key, entry in doc["arrays"].items():
        flat = memoryview(arrays[key].reshape(-1)).cast("B") if arrays[key].size else b""
        for i, crc in enumerate(entry["crc32"]):
            jobs.append((key, i, flat, crc))

    def bad(job):
        key, i, flat, crc = job
        return None if zlib.crc32(flat[i * CHUNK:(i + 1) * CHUNK]) == crc else key

    with ThreadPoolExecutor(_THREADS) as pool:
        for key in pool.map(bad, jobs):
            if key is not None:
                file = os.path.join(os.path.dirname(manifest) or ".",
                                    doc["arrays"][key]["file"])
                raise CheckpointError(f"{file}: checksum mismatch: the data are corrupt")


def remove_unreferenced(path, keep=None):
    """Remove the data files and manifest temporaries of checkpoint ``path`` that its
    manifest does not name (``keep``: the names it does, read from it when ``None``)."""
    manifest = manifest_path(path)
    if keep is None:
        try:
            keep = {e["file"] for e in _read_manifest(manifest)["arrays"].values()}
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


def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
