"""Numba CPU kernels, same names and signatures as ``kernels.reference``."""
from kernels.cpu.optim import *  # noqa: F401,F403
from kernels.cpu.rows import *  # noqa: F401,F403
