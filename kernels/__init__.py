"""Array kernels for minigrad: pure functions on arrays, no graph objects.

Three modules share names and signatures:

* ``kernels.reference``: NumPy, the definition of each kernel;
* ``kernels.cpu``: Numba ``@njit(cache=True, nogil=True)`` versions;
* ``kernels.gpu``: CuPy versions (imported lazily; ``ImportError`` without CuPy/CUDA).
"""
