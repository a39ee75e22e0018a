"""``mg.sparse``: operations on CSR inputs (``mg.csr_matrix``)."""
from minigrad.ops.sparse import dot, square, sum_rows

__all__ = ["dot", "square", "sum_rows"]
