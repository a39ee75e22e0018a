"""NumPy reference kernels: the definition every other implementation is tested against."""
from kernels.reference.optim import *  # noqa: F401,F403
from kernels.reference.rows import *  # noqa: F401,F403
