"""Tier-up of the embedding and FM training steps (``mg.Mode(linker="tiered")``).

Each case runs in a fresh child process with its own empty ``MINIGRAD_CACHE_DIR`` (the
segments are new; Numba's cache of the helpers in ``kernels/`` is whatever this machine
has): the step runs until the tiered phase has swapped to its compiled segments. Reported:
the seconds and calls until the swap, the slowest call (the one that loads the segments),
and the median step time before and after the swap, each against the generated
linker's in the same window (interleaved calls in the same process).

    python -m benchmarks.tiered [--cases embedding,fm] [--nice 10] [--limit 300]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

_CHILD = r"""
import json, sys, time
import numpy as np
from minigrad import tiered
from benchmarks import floor
case, nice, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
tiered.POLICY.min_calls, tiered.POLICY.min_seconds, tiered.POLICY.nice = 20, 0.0, nice
variants = {"minigrad": (True, "generated"), "tiered": (True, "tiered")}
if case == "embedding":
    systems = floor.embedding_systems(None, 8, variants=variants)
else:
    floor.VARIANTS, floor.SMOKE_VARIANTS = variants, variants
    systems = floor.fm_systems(None, 16, quick=True)
plain, tiered_step = systems["minigrad"][0], systems["tiered"][0]
fn = tiered_step.__defaults__[0]
phase = fn._safe_run
times = {"plain before": [], "plain after": [], "before": [], "after": []}
start, i, swap = time.perf_counter(), 0, None
slowest = 0.0
while time.perf_counter() - start < limit:
    state = phase.state
    t = time.perf_counter(); plain(i)
    times["plain after" if state == "jit" else "plain before"].append(time.perf_counter() - t)
    t = time.perf_counter(); tiered_step(i); dt = time.perf_counter() - t
    if i >= 3:
        slowest = max(slowest, dt)
    if phase.state == "jit" and swap is None:
        swap = dict(seconds=time.perf_counter() - start, calls=i + 1, call_s=dt)
    elif state == "jit":
        times["after"].append(dt)
    elif i >= 3:
        times["before"].append(dt)
    if swap is not None and len(times["after"]) >= 300:
        break
    i += 1
med = {k: float(np.median(v)) * 1e3 if v else None for k, v in times.items()}
print(json.dumps(dict(case=case, swap=swap, state=phase.state, why=phase.why,
                      slowest_call_s=slowest, median_ms=med)))
"""


def run_case(case, nice=10, limit=300.0):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, MINIGRAD_CACHE_DIR=cache, PYTHONPATH=root)
        out = subprocess.run([sys.executable, "-c", _CHILD, case, str(nice), str(limit)],
                             env=env, cwd=root, capture_output=True, text=True,
                             timeout=limit + 300)
    if out.returncode != 0:
        raise RuntimeError(f"{case}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="embedding,fm")
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--limit", type=float, default=300.0, help="seconds per case")
    args = parser.parse_args(argv)
    for case in args.cases.split(","):
        res = run_case(case, args.nice, args.limit)
        m, swap = res["median_ms"], res["swap"]
        if swap is None:
            print(f"{case}: no swap within {args.limit:.0f} s (state {res['state']}: "
                  f"{res['why']})")
            continue
        print(f"{case}: swapped after {swap['seconds']:.1f} s / {swap['calls']} calls; "
              f"swapping call {swap['call_s']:.3f} s, slowest call after the first three "
              f"{res['slowest_call_s']:.3f} s; step medians, while compiling: "
              f"tiered {m['before']:.3f} ms / generated {m['plain before']:.3f} ms; after the "
              f"swap: tiered {m['after']:.3f} ms / generated {m['plain after']:.3f} ms "
              f"({m['after'] / m['plain after']:.2f}x)")


if __name__ == "__main__":
    main()
