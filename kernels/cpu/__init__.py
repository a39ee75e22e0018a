"""Numba CPU kernels, same names and signatures as ``kernels.reference``.

The kernels' ``prange`` loops use Numba's ``workqueue`` threading layer unless
``NUMBA_THREADING_LAYER`` says otherwise: GNU OpenMP (the default layer of the PyPI wheels)
aborts any process that forks after using it, and ``mg.parallel.hogwild`` forks workers.
"""
import os as _os

if "NUMBA_THREADING_LAYER" not in _os.environ:
    import numba as _numba

    _numba.config.THREADING_LAYER = "workqueue"
from kernels.cpu import fresh as _fresh  # noqa: E402
from kernels.cpu import fused as _fused  # noqa: E402
from kernels.cpu import optim as _optim  # noqa: E402
from kernels.cpu import rows as _rows  # noqa: E402
from kernels.cpu.fresh import *  # noqa: E402,F401,F403
from kernels.cpu.fused import *  # noqa: E402,F401,F403
from kernels.cpu.optim import *  # noqa: E402,F401,F403
from kernels.cpu.rows import *  # noqa: E402,F401,F403

__all__ = [*_rows.__all__, *_optim.__all__, *_fused.__all__, *_fresh.__all__]
