"""The minigrad benchmark suite: ``python -m benchmarks [--quick] [--compare torch] ...``.

Each module (``embedding``, ``fm_noise``, ``text``, ``kernels``, ``optim``, ``hogwild``)
exposes ``run(quick, compare, out_dir[, smoke]) -> dict`` and can be run alone; the suite
runner in ``__main__.py`` runs every module present and writes one ``results.json``.
Nothing here is imported by ``minigrad``.
"""
