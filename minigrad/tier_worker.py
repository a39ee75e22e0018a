"""The background compiler of the tiered linker: one short-lived child process per job.

Run as a *script* (``python path/to/tier_worker.py``), so that it imports neither
``minigrad`` nor anything else of the parent's program: only Numba and the generated
segment module (which imports ``kernels.cpu``). ``minigrad/tiered.py`` starts it and writes
one job to its stdin: an 8-byte length, then a pickle of::

    {"sys_path": [...], "path": ".../jit_<hash>.py", "module": "minigrad_jit_<hash>",
     "signatures": {"segment0": (numba type, ...), ...}}

The child compiles each segment for its argument types, which writes Numba's on-disk
cache next to the generated file (the parent then *loads* the machine code instead of
compiling it: a fraction of a second), writes the bundle of their helpers
(``backends/helper_bundle.py``: the parent binds them in one load), prints one JSON line
``{"compiled": [...], "errors": {name: message}}`` and exits (status 0 when every segment compiled).

It never outlives its parent: a thread reads stdin to its end, and the end of stdin means
the parent closed it or died, so the child exits at once (``os._exit``), mid-compile if
need be; Numba writes its cache files atomically, so an interrupted compile leaves nothing
half-written. It runs at a lower priority (``os.nice``) so that the parent's training
steps keep their share of the CPU.
"""
import json
import os
import pickle
import sys
import threading


def _exit_when_parent_goes(stream):
    def watch():
        try:
            while stream.read(65536):
                pass
        finally:
            os._exit(3)

    threading.Thread(target=watch, daemon=True, name="tier-parent-watch").start()


def _read_job(stream):
    size = int.from_bytes(stream.read(8), "little")
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("incomplete job")
    return pickle.loads(data)  # noqa: S301 - written by our own parent process


def main():
    stdin = sys.stdin.buffer
    job = _read_job(stdin)
    _exit_when_parent_goes(stdin)
    try:
        os.nice(int(job.get("nice", 10)))
    except OSError:
        pass
    sys.path[:0] = [p for p in job["sys_path"] if p not in sys.path]
    import importlib.util

    spec = importlib.util.spec_from_file_location(job["module"], job["path"])
    module = importlib.util.module_from_spec(spec)
    sys.modules[job["module"]] = module  # Numba's cache finds the module by this name
    spec.loader.exec_module(module)
    compiled, errors = [], {}
    for name, types in job["signatures"].items():
        try:
            getattr(module, name).compile(tuple(types))
            compiled.append(name)
        except Exception as err:  # reported to the parent, which stays on its thunks
            errors[name] = f"{type(err).__name__}: {str(err)[:2000]}"
    for name in compiled:  # the helpers' bundle, so the parent binds them in one load
        try:
            from minigrad.backends.jit_calls import write_bundle

            write_bundle(getattr(module, name))
        except Exception:  # only a faster bind in the parent: never a failed job
            pass
    sys.stdout.write(json.dumps({"compiled": compiled, "errors": errors}) + "\n")
    sys.stdout.flush()
    os._exit(0 if not errors else 2)


if __name__ == "__main__":
    main()
