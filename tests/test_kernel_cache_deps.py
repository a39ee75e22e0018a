"""A kernel's disk cache goes stale when a kernel file it calls or inlines changes.

Numba stamps a cache with its own source file only, so ``update_driver.step_rows`` kept
its cached machine code after an edit of ``direct_rows.adam_plain``, which it inlines.
``kernels.cpu.deferred_cache`` adds the stamps of the module's ``kernels`` imports,
transitively; these tests check that closure and that a different closure reads as stale.
"""
import numpy as np
import pytest

from kernels.cpu import deferred_cache
from kernels.cpu.deferred_cache import DeferredCacheDispatcher, dependency_stamp


def _names(module):
    return {name for name, _, _ in dependency_stamp(module)}


def test_the_update_driver_depends_on_what_it_inlines():
    names = _names("kernels.cpu.update_driver")
    # step_rows -> direct_rows.adam_plain -> kernels.rules.adam; direct_rows -> rows
    assert {"kernels.cpu.update_driver", "kernels.cpu.direct_rows", "kernels.rules.adam",
            "kernels.cpu.rows", "kernels.rules.momentum"} <= names
    assert "kernels.cpu.fused" not in names  # only what it reaches


def test_import_lines_are_read_in_every_form(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text(
        "from kernels.cpu.optim import (\n    _lag,  # the lag\n    _skipped_map,\n)\n"
        "from kernels.rules import adam as adam_rule\n"
        "import kernels.cpu.rows\n"
        "x = 'from kernels.cpu.fused import nothing'  # not at the start of a line\n")
    got = deferred_cache._kernel_imports(str(src))
    assert got == {"kernels.cpu.optim", "kernels.rules", "kernels.rules.adam",
                   "kernels.cpu.rows"}


def test_a_changed_dependency_makes_the_cache_stale():
    from kernels.cpu import rows

    kernel = rows._scatter_add
    assert isinstance(kernel, DeferredCacheDispatcher)
    out = np.zeros((4, 2))
    kernel(out, np.array([1, 1, 3], dtype=np.int64), np.ones((3, 2)), np.int64(0))
    np.testing.assert_array_equal(out[:, 0], [0, 2, 0, 1])
    cache_file = kernel._cache._cache_file
    own, deps = cache_file._source_stamp
    assert deps == dependency_stamp("kernels.cpu.rows")
    if not cache_file._load_index():
        pytest.skip("no cache index on disk (the cache directory is not writable)")
    try:
        name, mtime, size = deps[0]
        cache_file._source_stamp = (own, ((name, mtime + 1, size),) + deps[1:])
        assert cache_file._load_index() == {}  # stale: the kernel compiles again
    finally:
        cache_file._source_stamp = (own, deps)
    assert cache_file._load_index()
