"""What a compile does not pay for: kernels it never calls, caches it never reads.

``kernels.cpu`` imports a submodule at the first use of one of its names, ``@njit`` kernels
set their on-disk cache up at their first compile (``kernels/cpu/deferred_cache.py``), and
a jit segment makes its helpers' intrinsics only when Numba compiles it
(``jit_calls.prepare``). The jit segment compiled right after a fresh import is covered by
``test_jit_calls.test_fresh_process_loads_binds_and_runs_the_cached_segment``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("numba", reason="the numba kernels")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAZY = ("kernels.cpu.fresh", "kernels.cpu.jit_ops", "kernels.cpu.fused", "kernels.cpu.optim")

_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import minigrad as mg
    at_import = sorted(m for m in sys.modules if m.startswith(("numba", "kernels.cpu")))
    x = mg.vector("x")
    f = mg.function([x], (x * x).sum(), mode=mg.Mode(backend="numba"))
    after_compile = sorted(m for m in sys.modules if m.startswith("kernels.cpu."))
    value = float(f(np.arange(4.0)))
    print(json.dumps({"at_import": at_import, "after_compile": after_compile,
                      "value": value}))
""")


def test_import_and_a_compile_load_no_kernel_they_do_not_use():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["at_import"] == [], "import minigrad loaded numba or kernels"
    assert not set(LAZY) & set(got["after_compile"]), got["after_compile"]
    assert got["value"] == 14.0


def test_kernels_cpu_names_resolve_to_their_submodules():
    import kernels.cpu as cpu

    for sub in cpu._EXPORTING:
        module = importlib.import_module(f"kernels.cpu.{sub}")
        for name in module.__all__:
            assert getattr(cpu, name) is getattr(module, name), name
    for name, sub in cpu._WHERE.items():  # the table that keeps submodules unloaded
        assert name in importlib.import_module(f"kernels.cpu.{sub}").__all__, name
    assert cpu.jit_ops is importlib.import_module("kernels.cpu.jit_ops")
    with pytest.raises(AttributeError, match="no attribute 'no_such_kernel'"):
        cpu.no_such_kernel  # noqa: B018
    namespace = {}
    exec("from kernels.cpu import *", namespace)  # noqa: S102
    assert {"gather_rows", "adam_rows", "csr_gather_mul_sum", "fresh_linear"} <= set(namespace)


_MODULE = textwrap.dedent("""
    from kernels.cpu.deferred_cache import njit

    @njit(cache=True, nogil=True)
    def twice(a):
        return 2.0 * a

    @njit(nogil=True)
    def plain(a):
        return a + 1.0

    @njit("float64(float64)", cache=True)
    def eager(a):
        return a - 1.0
""")


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deferred_cache_is_set_up_at_the_first_compile_and_loads_like_numba(tmp_path):
    from numba.core.caching import FunctionCache, NullCache
    from numba.core.registry import CPUDispatcher

    from kernels.cpu.deferred_cache import DeferredCacheDispatcher

    path = tmp_path / "deferred_kernels.py"
    path.write_text(_MODULE)
    first = _load(path, "deferred_kernels_a")
    assert isinstance(first.twice, DeferredCacheDispatcher)
    assert isinstance(first.twice._cache, NullCache)  # nothing looked up at import
    assert first.twice(np.float64(3.0)) == 6.0
    assert isinstance(first.twice._cache, FunctionCache)
    assert sum(first.twice.stats.cache_misses.values()) == 1
    assert type(first.plain) is CPUDispatcher and first.plain(1.0) == 2.0  # no cache asked
    assert isinstance(first.eager._cache, FunctionCache) and first.eager.signatures
    second = _load(path, "deferred_kernels_b")  # as a fresh process: from the cache
    assert second.twice(np.float64(5.0)) == 10.0
    assert sum(second.twice.stats.cache_hits.values()) == 1
    assert sum(second.twice.stats.cache_misses.values()) == 0
