"""Errors a user can cause, each with a message that says what to do and a stable exit code.

The CLI turns any :class:`DHumanDiffError` into one line on stderr and its ``exit_code``; nothing else in the
package prints tracebacks for user mistakes. Torch-free on purpose: every stage imports it.
"""

from __future__ import annotations


class DHumanDiffError(Exception):
    """Base of every user-facing error. ``exit_code`` is documented in the README."""

    exit_code = 1


class SettingsError(DHumanDiffError):
    """A generation setting (steps, seed, sampler, mode, precision) is out of range. Exit code 1."""


class InputImageError(DHumanDiffError):
    """An input photo cannot be read (missing, corrupt, truncated, not an image, too large)."""

    exit_code = 3


class FaceNotFoundError(DHumanDiffError):
    """No face (or a face too small) was found where one was expected."""

    exit_code = 4


class MultipleFacesError(DHumanDiffError):
    """Several faces were found where one was expected; ``--face-index`` picks one."""

    exit_code = 5


class PromptError(DHumanDiffError):
    """The prompt cannot be used (empty, or lacks a person word for an identity)."""

    exit_code = 6


class LayoutError(DHumanDiffError):
    """Layout boxes are unusable (outside the image, zero area, fully overlapping)."""

    exit_code = 7


class AnnotationError(DHumanDiffError):
    """A PairHuman annotation file is malformed; the message names the file and the field."""

    exit_code = 8


class CheckpointError(DHumanDiffError):
    """A checkpoint is missing, unsafe, or its keys/shapes do not match the model."""

    exit_code = 9


class BundleError(DHumanDiffError):
    """An exported bundle is missing, incomplete, tampered with, or for another runtime/format version."""

    exit_code = 10


class RuntimeUnavailableError(DHumanDiffError):
    """The requested runtime or device is not installed or not present on this machine."""

    exit_code = 11


class NumericalError(DHumanDiffError):
    """A component produced NaN or Inf (typically an fp16 VAE overflow)."""

    exit_code = 12


class ParityError(DHumanDiffError):
    """An exported graph is outside its stated fidelity budget."""

    exit_code = 13
