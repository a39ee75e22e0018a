"""Old generated files of a registered rule (``kernels.rule_drivers.remove_stale_files``):
an edited rule gets a new file, and the old ones go once no process has loaded them for
``STALE_AFTER_S``, with their compiled caches; other rules' files, recently loaded ones and
the current one stay; a live process whose file a remover took compiles a new signature
all the same."""
from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest

from kernels import rule_drivers
from kernels.rule_drivers import CompiledRule, remove_stale_files

DAY = 24 * 3600


def _fake(directory, stem, age_s, marker_age_s=None, caches=True):
    """A generated file ``stem`` aged ``age_s`` (its marker ``marker_age_s``; None: none),
    with the bytecode and Numba cache files a load leaves next to it."""
    now = 1e9
    paths = [directory / f"{stem}.py"]
    if caches:
        (directory / "__pycache__").mkdir(exist_ok=True)
        paths += [directory / "__pycache__" / f"{stem}.{ext}"
                  for ext in ("cpython-311.pyc", "rows-12.py311.nbi", "rows-12.py311.1.nbc")]
    for path in paths:
        path.write_text("x")
        os.utime(path, (now - age_s, now - age_s))
    if marker_age_s is not None:
        marker = directory / f"{stem}.used"
        marker.write_text("")
        os.utime(marker, (now - marker_age_s, now - marker_age_s))
    return now


def test_only_unused_files_of_the_same_rule_are_removed(tmp_path):
    h = "0123456789abcdef"
    now = _fake(tmp_path, f"rule_user_{h}", 3 * DAY, 2 * DAY)  # old, unused for 2 days
    _fake(tmp_path, f"rule_user_{'1' * 16}", 3 * DAY)  # old, never marked: by its own age
    _fake(tmp_path, f"rule_user_{'2' * 16}", 3 * DAY, 60)  # loaded a minute ago
    _fake(tmp_path, f"rule_user_{'3' * 16}", 3 * DAY, 3 * DAY)  # the current one
    _fake(tmp_path, f"rule_user_x_{h}", 3 * DAY, 3 * DAY)  # rule "user_x"
    _fake(tmp_path, "rule_user_notahash", 3 * DAY, caches=False)
    removed = remove_stale_files("user", f"rule_user_{'3' * 16}", str(tmp_path), DAY, now)
    assert sorted(removed) == sorted([f"rule_user_{h}", f"rule_user_{'1' * 16}"])
    left = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert left == sorted([f"rule_user_{'2' * 16}.py", f"rule_user_{'2' * 16}.used",
                           f"rule_user_{'3' * 16}.py", f"rule_user_{'3' * 16}.used",
                           f"rule_user_x_{h}.py", f"rule_user_x_{h}.used",
                           "rule_user_notahash.py"])
    cached = sorted({p.name.split(".")[0] for p in (tmp_path / "__pycache__").iterdir()})
    assert cached == [f"rule_user_{'2' * 16}", f"rule_user_{'3' * 16}", f"rule_user_x_{h}"]
    # a second remover (another process at the same moment) finds nothing left to take
    assert remove_stale_files("user", f"rule_user_{'3' * 16}", str(tmp_path), DAY, now) == []
    assert remove_stale_files("user", "x", str(tmp_path / "absent"), DAY, now) == []


_PROBE = textwrap.dedent('''
    def update(p, v, g, s, lr, wd, rho):
        v = rho * v + (1.0 - rho) * g * g
        return p - lr * g / (v + 1.0), v
''')


def test_a_live_loop_whose_file_was_removed_still_compiles(tmp_path, monkeypatch):
    """Loading a rule's loop removes its old unused file; when a remover takes the file of a
    loop another process has imported but not compiled yet, that process compiles all the
    same (Numba read the file's stamp at import): the rows of the formula."""
    pytest.importorskip("numba", reason="the compiled loop needs Numba")
    (tmp_path / "stale_probe_rule.py").write_text(_PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MINIGRAD_CACHE_DIR", str(tmp_path / "cache"))
    import stale_probe_rule

    directory = tmp_path / "cache" / "rule_drivers"
    directory.mkdir(parents=True)
    old = f"rule_stale_probe_{'a' * 16}"
    (directory / f"{old}.py").write_text("an edited rule's old loop")
    os.utime(directory / f"{old}.py", (1e9, 1e9))
    rule = CompiledRule("stale_probe", stale_probe_rule.update, ("v",), frozenset({"rho"}),
                        [True], None)
    assert rule.loop() is not None  # imported (compiled at the first call)
    assert not (directory / f"{old}.py").exists()  # removed when the current one loaded
    (current,) = [p for p in directory.glob("rule_stale_probe_*.py")]
    assert (directory / f"{current.stem}.used").exists()
    for path in [current, *(directory / "__pycache__").glob(f"{current.stem}.*")]:
        path.unlink()  # what a remover in another process does
    P, v = np.ones((4, 3)), np.zeros((4, 3))
    rule(P, v, np.array([1, 2]), np.full((2, 3), 0.5), 1, None, lr=0.1, weight_decay=0.0,
         rho=0.9)
    np.testing.assert_allclose(P[1:3], 1.0 - 0.1 * 0.5 / (0.1 * 0.25 + 1.0), rtol=1e-15)
    np.testing.assert_array_equal(P[[0, 3]], 1.0)
    assert rule_drivers.STALE_AFTER_S >= 3600  # a rule edited within the hour stays
