"""CuPy GPU kernels, same names and signatures as ``kernels.reference``.

Importing this module needs CuPy and a CUDA device; without them it raises a clear
``ImportError`` so callers can fall back to ``kernels.cpu``.
"""
from kernels.gpu._cupy import require_cupy

require_cupy()

from kernels.gpu import fresh as _fresh  # noqa: E402
from kernels.gpu import fused as _fused  # noqa: E402
from kernels.gpu import optim as _optim  # noqa: E402
from kernels.gpu import rows as _rows  # noqa: E402
from kernels.gpu.fresh import *  # noqa: E402,F401,F403
from kernels.gpu.fused import *  # noqa: E402,F401,F403
from kernels.gpu.optim import *  # noqa: E402,F401,F403
from kernels.gpu.rows import *  # noqa: E402,F401,F403

__all__ = [*_rows.__all__, *_optim.__all__, *_fused.__all__, *_fresh.__all__]
