"""NumPy reference kernels: the definition every other implementation is tested against."""
from kernels.reference import fresh as _fresh  # noqa: E402
from kernels.reference import fused as _fused  # noqa: E402
from kernels.reference import optim as _optim  # noqa: E402
from kernels.reference import rows as _rows  # noqa: E402
from kernels.reference.fresh import *  # noqa: E402,F401,F403
from kernels.reference.fused import *  # noqa: E402,F401,F403
from kernels.reference.optim import *  # noqa: F401,F403
from kernels.reference.rows import *  # noqa: F401,F403

__all__ = [*_rows.__all__, *_optim.__all__, *_fused.__all__, *_fresh.__all__]
