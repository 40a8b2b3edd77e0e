"""The repository's benchmark harnesses (not part of the installed package).

They build on the public API of :mod:`dhumandiff` (``dhumandiff.bench`` above all) and record machine-specific
studies into ``benchmarks/results/``; BENCHMARKS.md quotes them. Run them from the repository root, e.g.
``python benchmarks/bench_sd15.py --help``.
"""
