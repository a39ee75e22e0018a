"""``DistributedError``: a distributed run failed in a way it could not recover from."""
from __future__ import annotations


class DistributedError(RuntimeError):
    """Raised by ``mg.distributed.train`` (the caller's parameters are untouched).

    ``actor`` names the actor that failed (``"shard-1"``, ``"worker-0"``, ``"driver"``),
    ``reason`` says what happened and ``remote_traceback`` holds the formatted traceback
    from inside the actor when there is one.
    """

    def __init__(self, actor, reason, remote_traceback=None):
        self.actor, self.reason, self.remote_traceback = actor, reason, remote_traceback
        message = f"{actor}: {reason}"
        if remote_traceback:
            message += "\n--- traceback in the actor ---\n" + remote_traceback.rstrip()
        super().__init__(message)

    def __reduce__(self):  # survives pickling (it crosses process boundaries)
        return (type(self), (self.actor, self.reason, self.remote_traceback))
