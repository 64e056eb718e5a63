"""SpatialActiveLearning backend: which 2D slices of a 3D scan to annotate next, and pseudo-labels for the rest.

Pure Python (numpy, scipy, SimpleITK, ITK, torch/MONAI); never imports Slicer, Qt or VTK. Arrays are KJI-ordered
(``[k, j, i]``, as SimpleITK and Slicer return them).

Console API::

    import spatial_al
    ranking = spatial_al.rank(image, "fixed_interval", budget=10)            # slices to annotate, best first
    result = spatial_al.propagate(labels, annotated=[0, 10, 20], method="sdf", spacing=(10.0, 0.8, 0.8))
    result.labels, result.confidence                                           # filled labels, per-slice confidence
    spatial_al.rank_volumes([ct1, ct2, ct3], "proxy_variance", k=1).top(1)   # which scan to annotate first
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .propagation import PROPAGATORS, PropagationResult, propagate
    from .selection import STRATEGIES, RankingResult, rank
    from .selection.volumes import VolumeRanking, rank_volumes
    from .volume import Geometry, Segment, SliceStack, SliceStatus

__version__ = "0.1.0"

# Name -> submodule. Loaded on first use (PEP 562), so that ``import spatial_al.volume`` needs numpy only: Slicer
# imports the modules' Logic, and runs their self-tests, before torch and scipy are installed.
_EXPORTS = {
    "PROPAGATORS": "propagation",
    "PropagationResult": "propagation",
    "propagate": "propagation",
    "STRATEGIES": "selection",
    "RankingResult": "selection",
    "rank": "selection",
    "VolumeRanking": "selection.volumes",
    "rank_volumes": "selection.volumes",
    "Geometry": "volume",
    "Segment": "volume",
    "SliceStack": "volume",
    "SliceStatus": "volume",
}

__all__ = [
    "PROPAGATORS",
    "STRATEGIES",
    "Geometry",
    "PropagationResult",
    "RankingResult",
    "Segment",
    "SliceStack",
    "SliceStatus",
    "VolumeRanking",
    "__version__",
    "propagate",
    "rank",
    "rank_volumes",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spatial_al' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
