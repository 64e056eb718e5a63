"""Propagation: fill the slices that are not annotated with pseudo-labels from the annotated ones.

Methods live in :data:`PROPAGATORS` (``spatial-al methods`` lists them); :func:`propagate` runs one.
"""

from . import auto, interpolation, learned, sli2vol  # noqa: F401  (register sdf, contour, star, model, sli2vol, auto)
from .base import PROPAGATORS, PropagationResult, PropagationTask, propagate

__all__ = ["PROPAGATORS", "PropagationResult", "PropagationTask", "propagate"]
