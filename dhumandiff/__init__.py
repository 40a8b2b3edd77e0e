"""dhumandiff: DHumanDiff dual-person portraits, trained, distilled, exported and run on the edge.

The package is laid out as the data flow: ``data -> model -> training -> distill -> calibration -> export ->
runtimes``, with ``cli`` on top. Importing the package itself is torch-free.
"""

__version__ = "0.1.0"
