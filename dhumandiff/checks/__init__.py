"""checks: measurements that sit above both the model and the runtimes (e.g. ``parity``), so they may import both."""
