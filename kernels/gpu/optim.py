"""CuPy versions of the fused optimizer row updates.

The NumPy definitions in ``kernels/reference/optim.py`` are written against the array
namespace of ``param``, so on CuPy arrays they run on the device unchanged: every step is
a handful of vectorised kernels over the touched rows (gather, update, scatter), with the
same argument checks. Fusing each rule into one RawKernel is left for later; see
docs/optimizers.md.
"""
from kernels.gpu._cupy import require_cupy
from kernels.reference import optim as _reference
from kernels.row_kernels import register_row_kernels

__all__ = ["sgd_rows", "momentum_rows", "adagrad_rows", "rmsprop_rows", "adam_rows"]


def _on_device(fn):
    def wrapper(param, *args, **kwargs):
        cp = require_cupy()
        if not isinstance(param, cp.ndarray):
            raise TypeError(f"kernels.gpu.{fn.__name__} needs CuPy arrays, got "
                            f"{type(param).__name__}")
        return fn(param, *args, **kwargs)

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


sgd_rows = _on_device(_reference.sgd_rows)
momentum_rows = _on_device(_reference.momentum_rows)
adagrad_rows = _on_device(_reference.adagrad_rows)
rmsprop_rows = _on_device(_reference.rmsprop_rows)
adam_rows = _on_device(_reference.adam_rows)


register_row_kernels('cupy', {"sgd": sgd_rows, "momentum": momentum_rows,
                               "adagrad": adagrad_rows, "rmsprop": rmsprop_rows,
                               "adam": adam_rows})
