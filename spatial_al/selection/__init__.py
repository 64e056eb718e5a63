"""Query strategies: which slices to annotate next; and pseudo-label selection for semi-supervised rounds.

Strategies live in :data:`STRATEGIES` (``spatial-al strategies`` lists them); :func:`rank` runs one on a volume,
:func:`rank_cohort` on several. :func:`select_pseudo_labels` picks confident slices to pseudo-label.
"""

from . import cold_start, diversity, proxy, spatial, strided, uncertainty, unsupervised, vaal  # noqa: F401  (register the strategies)
from .base import STRATEGIES, RankingContext, RankingResult, RankingVolume, rank, rank_cohort, strategy_info
from .pseudo_labels import PSEUDO_LABEL_SELECTORS, PseudoLabelSelection, select_pseudo_labels

__all__ = [
    "PSEUDO_LABEL_SELECTORS",
    "STRATEGIES",
    "PseudoLabelSelection",
    "RankingContext",
    "RankingResult",
    "RankingVolume",
    "rank",
    "rank_cohort",
    "select_pseudo_labels",
    "strategy_info",
]
