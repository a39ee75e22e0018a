"""Parallel training: ``mg.parallel.hogwild`` (lock-free Hogwild! over shared memory)."""
from minigrad.parallel.hogwild import HogwildResult, WorkerError, hogwild
from minigrad.parallel.worker import worker_rank

__all__ = ["HogwildResult", "WorkerError", "hogwild", "worker_rank"]
