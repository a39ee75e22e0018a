"""Generated source as an importable module on disk, which Numba's on-disk cache needs.

Numba caches a compiled function next to the *file* that defines it and re-imports that
module by name to find it again, so generated kernels (fused element-wise loops, the jit
linker's segments) are written to a real file in the cache directory and imported from
there. The file is written atomically (a temporary file, then ``os.replace``): processes
that generate the same source at once write the same text, and none reads a half file.
Where the directory is not writable, the source is compiled in memory instead (it works,
only the JIT is paid again by the next process), with a warning.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import types
import warnings


def _write_once(path, text):
    if os.path.exists(path):
        return
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)  # atomic: concurrent processes write the same text
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def import_generated(directory, file_name, module_name, source, what):
    """``(module, path)`` for ``source``, whose decorators say ``cache=CACHE``.

    From ``directory/file_name`` (written if new) with ``cache=True``, imported as
    ``module_name``; or, when that fails, compiled in memory with ``cache=False`` (``path``
    None) after a ``RuntimeWarning`` naming ``what`` and the directory.
    """
    path = os.path.join(directory, file_name)
    try:
        os.makedirs(directory, exist_ok=True)
        _write_once(path, source.replace("cache=CACHE", "cache=True"))
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # Numba's cache re-imports it by name
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
        return module, path
    except Exception as err:  # no writable cache, or a stale entry: compile in memory
        warnings.warn(f"{what} not cached on disk ({directory}: {err}); compiling in memory",
                      RuntimeWarning, stacklevel=3)
        module = types.ModuleType(module_name)
        exec(compile(source.replace("cache=CACHE", "cache=False"), f"<{module_name}>",  # noqa: S102
                     "exec"), module.__dict__)
        return module, None
