"""``import minigrad`` stays light: no torch, cupy or matplotlib, whatever is installed."""
from __future__ import annotations

import subprocess
import sys


def test_import_minigrad_pulls_no_optional_heavyweights():
    code = (
        "import sys, minigrad as mg\n"
        "x = mg.vector('x'); mg.function([x], (x ** 2).sum())\n"
        "heavy = [m for m in ('torch', 'cupy', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "", f"import minigrad imported {out.stdout.strip()}"


def test_lazy_subpackages_resolve():
    import minigrad as mg

    assert mg.optim.Adam and mg.models.FactorizationMachine and mg.data.batches
    assert mg.parallel.hogwild and callable(mg.save) and callable(mg.load)
