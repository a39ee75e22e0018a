"""``mg.distributed``: an asynchronous sharded parameter server on Ray (optional extra).

``import minigrad.distributed`` does not import Ray; :func:`train` does, when called.
See ``docs/distributed.md`` for the design, the network-safety settings and a capacity
model.
"""
from __future__ import annotations

from minigrad.distributed.driver import DistributedResult, train
from minigrad.distributed.errors import DistributedError

__all__ = ["DistributedError", "DistributedResult", "train"]
