"""Propagation: fill the slices between annotated slices with pseudo-labels.

Methods live in :data:`PROPAGATORS` (``spatial-al methods`` lists them); :func:`propagate` runs one.
"""

from . import interpolation  # noqa: F401  (registers sdf and contour)
from .base import PROPAGATORS, PropagationResult, propagate

__all__ = ["PROPAGATORS", "PropagationResult", "propagate"]
