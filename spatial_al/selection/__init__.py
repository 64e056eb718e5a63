"""Query strategies: which slices to annotate next.

Strategies live in :data:`STRATEGIES` (``spatial-al strategies`` lists them); :func:`rank` runs one.
"""

from . import cold_start  # noqa: F401  (registers random, fixed_interval, stratified)
from .base import STRATEGIES, RankingContext, RankingResult, rank

__all__ = ["STRATEGIES", "RankingContext", "RankingResult", "rank"]
