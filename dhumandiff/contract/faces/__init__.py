"""Faces, torch-free: the ``Face`` record and the refusals every photo goes through, the square crop in front of
an identity encoder, the runtimes' :class:`~.crop.FaceCropper`, and the tiny world's palette detector."""
