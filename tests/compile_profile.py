"""Where the suite's time goes into Numba compiles: an opt-in pytest plugin.

The suite's cold-cache time (CI starts with empty Numba and minigrad caches) is mostly
compiles, and a compile is paid by whichever test first calls a kernel with a new type
signature. ``--durations`` cannot tell that cost from the test's own work, so this plugin
listens to Numba's ``numba:compile`` event (fired on real compiles only, not on cache
loads) and charges each outermost compile to the test phase (setup / call / teardown, or
collection) that triggered it.

Turn it on with ``MINIGRAD_COMPILE_PROFILE=profile.json python -m pytest -q``; it writes
the JSON (per test: compile seconds and what was compiled; per function: signatures and
seconds) and prints the top tests and functions at the end of the run. Off by default: it
adds a listener call per compile, nothing per test.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict

TOP = 25  # rows printed per table


def _function_name(dispatcher):
    func = getattr(dispatcher, "py_func", None)
    if func is None:
        return repr(dispatcher)
    return f"{func.__module__}.{func.__qualname__}"


class CompileProfile:
    """A pytest plugin (registered from ``conftest.pytest_configure``) and the Numba listener."""

    def __init__(self, path):
        from numba.core import event

        self.path = path
        self.where = "collection"
        self.local = threading.local()
        self.by_test = defaultdict(float)  # outermost compile seconds per test phase
        self.compiled = defaultdict(list)  # test phase -> [(function, signature, seconds)]
        self.by_function = defaultdict(lambda: {"seconds": 0.0, "signatures": []})
        profile = self

        class Listener(event.Listener):
            def on_start(self, ev):
                stack = profile.local.__dict__.setdefault("stack", [])
                stack.append(time.perf_counter())

            def on_end(self, ev):
                stack = profile.local.stack
                seconds = time.perf_counter() - stack.pop()
                profile.record(ev.data, seconds, outermost=not stack)

        self.listener = Listener()
        event.register("numba:compile", self.listener)

    def record(self, data, seconds, outermost):
        name = _function_name(data["dispatcher"])
        signature = ", ".join(str(a) for a in data["args"])
        entry = self.by_function[name]
        entry["signatures"].append(signature)
        if outermost:  # nested compiles are inside their caller's seconds already
            entry["seconds"] += seconds
            self.by_test[self.where] += seconds
            self.compiled[self.where].append((name, signature, round(seconds, 3)))

    def _phase(self, item, phase):
        self.where = f"{item.nodeid} [{phase}]"

    # --- pytest hooks ---------------------------------------------------------------
    def pytest_runtest_setup(self, item):
        self._phase(item, "setup")

    def pytest_runtest_call(self, item):
        self._phase(item, "call")

    def pytest_runtest_teardown(self, item):
        self._phase(item, "teardown")

    def pytest_unconfigure(self, config):
        from numba.core import event

        event.unregister("numba:compile", self.listener)
        tests = sorted(self.by_test.items(), key=lambda kv: -kv[1])
        functions = sorted(self.by_function.items(), key=lambda kv: -kv[1]["seconds"])
        report = {
            "total_outermost_s": sum(self.by_test.values()),
            "tests": [{"test": t, "seconds": round(s, 3), "compiled": self.compiled[t]}
                      for t, s in tests],
            "functions": [{"function": f, "seconds": round(e["seconds"], 3),
                           "signatures": e["signatures"]} for f, e in functions],
        }
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, self.path)

    def pytest_terminal_summary(self, terminalreporter):
        tr = terminalreporter
        total = sum(self.by_test.values())
        tr.write_sep("=", f"numba compiles: {total:.1f} s in all (outermost), "
                          f"profile in {self.path}")
        per_file = defaultdict(float)
        for where, seconds in self.by_test.items():
            per_file[where.split("::")[0].split(" ")[0]] += seconds
        for name, seconds in sorted(per_file.items(), key=lambda kv: -kv[1])[:TOP]:
            tr.write_line(f"{seconds:8.1f} s  {name}")
        tr.write_sep("-", "tests paying the most compile time")
        for where, seconds in sorted(self.by_test.items(), key=lambda kv: -kv[1])[:TOP]:
            tr.write_line(f"{seconds:8.1f} s  {where}")
        tr.write_sep("-", "functions (seconds, number of signatures)")
        functions = sorted(self.by_function.items(), key=lambda kv: -kv[1]["seconds"])
        for name, e in functions[:TOP]:
            tr.write_line(f"{e['seconds']:8.1f} s  {len(e['signatures']):3d}  {name}")
