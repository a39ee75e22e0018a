"""Lazy access to CuPy for ``kernels.gpu``.

CuPy is an optional extra (``minigrad[gpu]``) and importing it can fail in many ways (not
installed, no CUDA driver, no device, a driver/toolkit mismatch). ``require_cupy`` turns
every one of those into a single ``ImportError`` with an actionable message, so callers
can write ``try: import kernels.gpu except ImportError: use kernels.cpu``.
"""

__all__ = ["require_cupy"]  # plus the lazy module attribute ``cupy``

_HINT = "kernels.gpu needs CuPy and a CUDA device: pip install 'minigrad[gpu]'"
_cupy = None


def require_cupy():
    """Import CuPy and check that a CUDA device exists; return the ``cupy`` module.

    Raises ``ImportError`` (chained to the underlying error) when CuPy is missing or
    unusable, or when no CUDA device is visible. The result is cached after the first success.
    """
    global _cupy
    if _cupy is not None:
        return _cupy
    try:
        import cupy
    except Exception as exc:  # ImportError, but also CUDA library load errors
        raise ImportError(f"{_HINT} (cannot import cupy: {exc})") from exc
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError when there is no driver
        raise ImportError(f"{_HINT} (no usable CUDA runtime: {exc})") from exc
    if n_devices < 1:
        raise ImportError(f"{_HINT} (cupy found no CUDA device)")
    _cupy = cupy
    return cupy


def __getattr__(name):
    """``kernels.gpu._cupy.cupy`` imports CuPy on first access (PEP 562)."""
    if name == "cupy":
        return require_cupy()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
