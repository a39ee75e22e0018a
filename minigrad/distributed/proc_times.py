"""When the calling process was created, in ``time.time()`` seconds (Linux ``/proc``).

A restarted actor reports it next to the moment its constructor began and ended, so that
a recovery splits into its parts: failure detection and process spawn (kill -> process
created), interpreter and library imports (created -> constructor), and the restore
itself (constructor: rebuilding the step, loading the checkpoint).
"""
from __future__ import annotations

import os
import time


def process_started_at(pid="self"):
    """Creation time of process ``pid`` (``None`` where ``/proc`` cannot tell)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        # btime is whole seconds: refine it with the uptime clock for sub-second precision
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        boot = max(boot - 1, min(boot + 1, time.time() - uptime))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
