"""contract: what the exporter writes and every runtime reads, torch-free, at the bottom of the package.

One place for each rule that both sides of a bundle must agree on, so it cannot drift:

* :mod:`.bundle` — ``bundle.json``: format, version, components and their I/O, file digests; read, validate, write;
* :mod:`.registry` — the runtimes a bundle may name and the adapter that runs each;
* :mod:`.schedulers` — the samplers (NumPy schedulers, matched to diffusers' by class name);
* :mod:`.images` — loading user photos (one loader, one set of limits and refusals) and the encoders' inputs;
* :mod:`.layout` — where each person goes (one ``--layout`` parser, the region mask);
* :mod:`.faces` — face records, refusals and crops, and the tiny world's detector;
* :mod:`.metrics` — PSNR and cosine, as parity, calibration and evaluation measure them.

Import rule (``tests/test_layering.py``): this package imports only :mod:`dhumandiff.errors`,
:mod:`dhumandiff.utils` and NumPy / SciPy / Pillow / tokenizers, never torch or a pipeline stage.
"""
