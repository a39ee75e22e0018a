"""``mg.save`` / ``mg.load``: parameters and optimizer state in one ``.npz`` (never pickle).

Layout: ``param/<i>`` arrays, ``opt/<key>`` arrays (the optimizer's ``state_dict()["state"]``),
``optx/<key>`` for any other array entry of the state_dict, and ``__meta__``, a 0-d string
array holding JSON: format name and version, parameter names and shapes, every non-array
entry of the optimizer's state_dict (class, version, hyperparameters, step, whatever else a
rule or schedule keeps there), and a SHA-256 checksum over every array (name, dtype,
shape, bytes). The container knows nothing of particular optimizers.

Reading a file that may be hostile (issue 15, items 6, 11, 19):

* the zip directory is read first; a member whose name is not one of ours, or whose
  *declared* size exceeds what these parameters can need, is refused before anything is
  decompressed (a 1.5 MB file may declare 1.6 GB);
* each array's ``.npy`` header is parsed (dtype and shape, no pickle) and checked against
  the target shape and its declared size before its data are read, and the zip stream
  stops at the declared size (so a member lying about its size fails its CRC, not RAM);
* every damaged file (bit flips in the directory, truncation, bad JSON) raises
  :class:`CheckpointError`; ``FileNotFoundError`` stays itself;
* names (and shapes) must match the given parameters unless ``positional=True``; values
  that overflow the target dtype (1e300 into float32) are refused;
* everything, including the optimizer's own checks and the writability of every target
  array, is checked before the first write.

Writing: a temporary file ``.<name>.tmp-<pid>-<random>.npz`` in the target's directory,
fsynced and renamed over the target (a crash mid-save leaves the previous file intact);
temporary files of the same target left by a dead process are removed by the next save.
Saving through a symbolic link replaces the link's target, not the link. The file's mode
follows the umask (or keeps the existing file's mode), like ``np.savez``.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import stat
import tempfile
import zipfile

import numpy as np

FORMAT = "minigrad-checkpoint"
VERSION = 2  # 2: generic optimizer entries ("opt_entries"); version 1 files still load
_META = "__meta__"
_MAX_META_BYTES = 1 << 20
_HEADER_SLACK = 1 << 16  # an .npy header is at most 64 KiB (format 2/3 allows 4 GiB, we do not)
_MEMBER = re.compile(r"(param/\d+|opt/[A-Za-z0-9_.\-]+|optx/[A-Za-z0-9_.\-]+|__meta__)\.npy")
_MAX_STEP = 2**62


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


def _jsonable(value):
    """numpy scalars inside a state_dict entry as plain Python numbers (for JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------------- save


def save(path, params, opt=None):
    """Write ``params`` (and ``opt``'s state) to ``path`` atomically (flushes first)."""
    params = _params(params)
    arrays = {f"param/{i}": np.asarray(_host(p.get_value())) for i, p in enumerate(params)}
    meta = {"format": FORMAT, "version": VERSION, "names": [p.name for p in params],
            "shapes": [list(a.shape) for a in arrays.values()], "optimizer": None}
    if opt is not None:
        sd = opt.state_dict()
        arrays.update({f"opt/{k}": np.asarray(_host(v)) for k, v in sd["state"].items()})
        entries = {}
        for key, value in sd.items():
            if key == "state":
                continue
            if isinstance(value, np.ndarray):
                arrays[f"optx/{key}"] = value
            else:
                entries[key] = _jsonable(value)
        meta.update(optimizer=sd.get("optimizer"), t=entries.get("t"),
                    hyper=entries.get("hyper"), opt_entries=entries)
    for name in arrays:
        if not _MEMBER.fullmatch(name + ".npy"):
            raise ValueError(f"cannot save state entry {name!r}: use letters, digits, '_.-'")
    meta["checksum"] = _checksum(arrays)
    target = _resolve_target(os.fspath(path))
    directory = os.path.dirname(target)
    base = os.path.basename(target)
    _remove_stale_temporaries(directory, base)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{base}.tmp-{os.getpid()}-",
                               suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, **{_META: np.array(json.dumps(meta))})
            f.flush()
            os.fchmod(f.fileno(), _file_mode(target))
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


def _resolve_target(path):
    """The file a save must replace: a symbolic link's (final) target, made absolute."""
    path = os.path.abspath(path)
    if os.path.islink(path):
        return os.path.realpath(path)
    return path


def _file_mode(target):
    """The mode ``np.savez`` would give: the existing file's, else 0666 minus the umask."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask():
    try:
        with open("/proc/self/status") as f:  # Linux: read it without changing it
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting (briefly process-wide)
    os.umask(mask)
    return mask


def _remove_stale_temporaries(directory, base):
    """Delete ``.<base>.tmp-<pid>-*.npz`` left by processes that no longer exist.

    A temporary of a live process (another saver of the same target, or this one) is left
    alone; one of a dead process (killed mid-save) would otherwise stay forever.
    """
    pattern = os.path.join(glob.escape(directory), f".{glob.escape(base)}.tmp-*-*.npz")
    for tmp in glob.glob(pattern):
        m = re.fullmatch(rf"\.{re.escape(base)}\.tmp-(\d+)-[^/]*\.npz", os.path.basename(tmp))
        if m is None:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and not _pid_alive(pid):
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OverflowError:
        return False
    return True


def fsync_directory(directory):
    """Make a rename inside ``directory`` durable (best effort: some filesystems refuse)."""
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


# --------------------------------------------------------------------------------- read


def _budget(params):
    """The most bytes an honest checkpoint of ``params`` can hold: every parameter at 8
    bytes per value, times a generous number of state tables, plus a fixed allowance."""
    values = sum(int(np.prod(p.value.shape)) for p in params)
    return 16 * 8 * values + (64 << 20)


def _read_member_header(stream, name):
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise CheckpointError(f"entry {name!r}: unsupported .npy version {version}")
    if dtype.hasobject or dtype.kind not in "biufcU":
        raise CheckpointError(f"entry {name!r}: dtype {dtype} is not allowed (no objects)")
    return shape, fortran, dtype


def _read_array(zf, info, name, path, expected_shape=None, max_bytes=None):
    """One member, header checked before its data are decompressed."""
    with zf.open(info) as stream:
        shape, fortran, dtype = _read_member_header(stream, name)
        header_len = stream.tell()
        if expected_shape is not None and tuple(shape) != tuple(expected_shape):
            raise CheckpointError(f"{path}: {name} has shape {tuple(shape)} in the file, "
                                  f"{tuple(expected_shape)} here")
        n = int(np.prod(shape, dtype=object))
        nbytes = n * dtype.itemsize
        if max_bytes is not None and nbytes > max_bytes:
            raise CheckpointError(f"{path}: {name} declares {nbytes} bytes (shape {shape}), "
                                  f"more than this checkpoint can hold")
        if header_len + nbytes != info.file_size:
            raise CheckpointError(f"{path}: {name}: declared size {info.file_size} does not "
                                  f"match its header (shape {shape}, {dtype})")
        data = stream.read(nbytes)
        if len(data) != nbytes:
            raise CheckpointError(f"{path}: {name} is truncated")
        stream.read(1)  # reach the end of the member: its CRC is checked there
    arr = np.frombuffer(data, dtype=dtype, count=n)
    if fortran:
        return arr.reshape(shape[::-1]).T.copy()
    return arr.reshape(shape).copy()


def _read(path, params, opt):
    """Every array and the metadata, read defensively (see the module note)."""
    budget = _budget(params)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            bad = [n for n in names if not _MEMBER.fullmatch(n)]
            if bad or len(set(names)) != len(names):
                raise CheckpointError(
                    f"{path}: not a minigrad checkpoint (unexpected entries "
                    f"{sorted(set(bad))[:5] or 'duplicated'})")
            declared = sum(i.file_size for i in infos)
            if declared > budget:
                raise CheckpointError(f"{path}: declares {declared} bytes of arrays, more "
                                      f"than {len(params)} parameter(s) can need ({budget})")
            by_name = {i.filename[:-4]: i for i in infos}
            if _META not in by_name:
                raise CheckpointError(f"{path}: not a minigrad checkpoint (no {_META} entry)")
            meta_arr = _read_array(zf, by_name.pop(_META), _META, path,
                                   max_bytes=_MAX_META_BYTES)
            meta = _parse_meta(path, meta_arr)
            arrays = {}
            for name, info in by_name.items():
                expected = None
                if name.startswith("param/"):
                    i = int(name[6:])
                    if i < len(params):
                        expected = tuple(params[i].value.shape)
                arrays[name] = _read_array(zf, info, name, path, expected, max_bytes=budget)
    except (FileNotFoundError, CheckpointError):
        raise
    except MemoryError as err:
        raise CheckpointError(f"{path}: an entry is too large to read: {err}") from err
    except Exception as err:  # zipfile, zlib, struct... raise many types on damaged files
        raise CheckpointError(f"{path}: not a readable .npz checkpoint (truncated or "
                              f"corrupt?): {type(err).__name__}: {err}") from err
    if meta.get("checksum") != _checksum(arrays):
        raise CheckpointError(f"{path}: checksum mismatch: the arrays are corrupt")
    return arrays, meta


def _parse_meta(path, arr):
    if arr.dtype.kind != "U" or arr.ndim != 0:
        raise CheckpointError(f"{path}: unreadable checkpoint metadata")
    try:
        meta = json.loads(str(arr[()]))
    except (TypeError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint metadata: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a minigrad checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else meta!r})")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version!r} is not supported "
                              f"(this minigrad reads 1 to {VERSION})")
    names = meta.get("names")
    if not isinstance(names, list) or not all(n is None or isinstance(n, str) for n in names):
        raise CheckpointError(f"{path}: malformed parameter names in the metadata")
    t = meta.get("t")
    if t is not None and (not isinstance(t, int) or isinstance(t, bool)
                          or not 0 <= t < _MAX_STEP):
        raise CheckpointError(f"{path}: step count {t!r} is not an integer in [0, 2**62)")
    return meta


# --------------------------------------------------------------------------------- load


def load(path, params, opt=None, positional=False):
    """Read ``path`` into ``params`` (and ``opt``); all checks pass before anything is
    written. Returns the checkpoint metadata (names, optimizer, step).

    Parameters are matched by position *and* name: a file saved from ``[A, B]`` refuses
    ``[B, A]`` (``positional=True`` loads by position whatever the names say; unnamed
    parameters match any name). Shapes always have to match.
    """
    params = _params(params)
    path = os.fspath(path)
    arrays, meta = _read(path, params, opt)
    n = sum(1 for k in arrays if k.startswith("param/"))
    if n != len(params) or len(meta["names"]) != n:
        raise CheckpointError(f"{path}: holds {n} parameters, {len(params)} were given")
    if not positional:
        _check_names(path, meta["names"], params)
    new = []
    for i, p in enumerate(params):
        arr = arrays.get(f"param/{i}")
        if arr is None:
            raise CheckpointError(f"{path}: parameter {i} is missing")
        if arr.dtype.kind != "f":
            raise CheckpointError(f"{path}: parameter {i} has dtype {arr.dtype}")
        new.append(_fit(path, f"parameter {i} ({p.name})", arr, p.type.dtype))
    state = _optimizer_state(path, arrays, meta, opt) if opt is not None else None
    _check_writable(params, opt)
    # everything checked: write (a flush runs first through the hooks of set_value)
    if state is not None:
        opt.load_state_dict(state)
    for p, arr in zip(params, new):
        p.flush()
        if isinstance(p.value, np.ndarray):  # in place: the table may be in shared memory
            p.value[...] = arr
        else:
            p.set_value(arr)
    return {k: meta.get(k) for k in ("names", "optimizer", "t", "hyper")}


def _check_names(path, file_names, params):
    given = [p.name for p in params]
    clash = [(i, f, g) for i, (f, g) in enumerate(zip(file_names, given))
             if f is not None and g is not None and f != g]
    if clash:
        i, f, g = clash[0]
        raise CheckpointError(
            f"{path}: parameter {i} is {f!r} in the file but {g!r} here (file order "
            f"{file_names}, given {given}); reorder the parameters, or pass positional=True "
            "to load by position")


def _fit(path, what, arr, dtype):
    """``arr`` cast to ``dtype``, refusing finite values that would become inf."""
    dtype = np.dtype(dtype)
    if arr.dtype == dtype or dtype.kind != "f":
        return arr.astype(dtype)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        out = arr.astype(dtype)
    broken = np.isfinite(arr) & ~np.isfinite(out)
    if broken.any():
        value = float(arr[broken].flat[0])
        raise CheckpointError(f"{path}: {what} holds {value!r}, which overflows {dtype.name}")
    return out


def _optimizer_state(path, arrays, meta, opt):
    if meta.get("optimizer") is None:
        raise CheckpointError(f"{path}: holds no optimizer state")
    entries = meta.get("opt_entries")
    if entries is None:  # version 1 layout
        entries = {"optimizer": meta["optimizer"], "version": meta.get("opt_version", 1),
                   "t": meta.get("t"), "hyper": meta.get("hyper")}
    if not isinstance(entries, dict):
        raise CheckpointError(f"{path}: malformed optimizer entries in the metadata")
    state = dict(entries)
    state.update({k[5:]: v for k, v in arrays.items() if k.startswith("optx/")})
    targets = {f"{i}.{k}": v for i, s in enumerate(getattr(opt, "state", ()))
               for k, v in s.items()}
    state["state"] = {}
    for k, v in arrays.items():
        if k.startswith("opt/"):
            key = k[4:]
            var = targets.get(key)
            dtype = var.type.dtype if var is not None else v.dtype
            state["state"][key] = _fit(path, f"optimizer state {key!r}", v, dtype)
    t = state.get("t")
    if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < _MAX_STEP:
        raise CheckpointError(f"{path}: optimizer step {t!r} is not an integer in [0, 2**62)")
    try:
        opt.check_state_dict(state)
    except (ValueError, TypeError, OverflowError) as err:
        raise CheckpointError(f"{path}: {err}") from err
    return state


def _check_writable(params, opt):
    """Every array ``load`` writes in place must be writeable: checked before the first
    write, so a read-only table cannot leave the load half done."""
    tables = [(p, p.value) for p in params]
    for s in getattr(opt, "state", ()) if opt is not None else ():
        tables += [(v, v.value) for v in s.values()]
    for last in getattr(opt, "last", ()) if opt is not None else ():
        if last is not None:
            tables.append((last, last.value))
    for var, value in tables:
        if isinstance(value, np.ndarray) and not value.flags.writeable:
            raise ValueError(f"{var} is read-only: cannot load into it (nothing was changed; "
                             f"give it a writeable array with set_value first)")


def _host(a):
    return a.get() if hasattr(a, "__cuda_array_interface__") else a
