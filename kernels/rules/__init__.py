"""One definition per optimizer rule (issue 13 item 3).

Each module here holds a rule's per-element update, written once as plain arithmetic that
is valid both on Python/Numba scalars and on NumPy (or CuPy) arrays:
``kernels.cpu.optim`` compiles it with ``njit(inline="always")`` into its row loop, and
``kernels.reference.optim`` (hence ``kernels.gpu``) calls the very same function on the
gathered rows. Flags that select a variant (``amsgrad``, ``centered``, ``nesterov``, ...) are
Python-level scalars in both, so every branch is on a scalar, never on array data. A
rule's zero-gradient step map (for the closed-form exact catch-up) lives beside it.
"""
from kernels.rules import adagrad, adam, momentum, rmsprop

__all__ = ["adagrad", "adam", "momentum", "rmsprop"]
