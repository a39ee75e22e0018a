"""Run a recursive graph walk on a graph thousands of nodes deep.

The printers (``debugprint``, ``pp``) are written recursively because a tree printer reads
best that way; a chain of 10^4 nodes would exceed Python's default recursion limit and the
main thread's C stack. ``call_deep`` runs the walk in a helper thread with a large stack
and a raised recursion limit (restored afterwards), and re-raises its exception, if any.
"""
from __future__ import annotations

import sys
import threading

STACK_BYTES = 512 * 1024 * 1024
RECURSION_LIMIT = 200_000

_lock = threading.Lock()


def call_deep(fn, *args, **kwargs):
    result, error = [], []

    def target():
        try:
            result.append(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - handed back to the caller
            error.append(err)

    with _lock:  # the recursion limit and the stack size setting are process-wide
        old_limit, old_stack = sys.getrecursionlimit(), threading.stack_size()
        try:
            threading.stack_size(STACK_BYTES)
            sys.setrecursionlimit(max(old_limit, RECURSION_LIMIT))
            worker = threading.Thread(target=target, name="minigrad-deep-walk")
            worker.start()
            worker.join()
        finally:
            threading.stack_size(old_stack)
            sys.setrecursionlimit(old_limit)
    if error:
        raise error[0]
    return result[0]
