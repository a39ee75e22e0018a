"""CuPy ``gather_lagging``: the reference definition runs as is on CuPy arrays (its boolean
test and fancy indexing are device operations)."""
from kernels.reference.fresh import gather_lagging

__all__ = ["gather_lagging"]
