"""The papers' active-learning studies, headless: protocols (configuration as data), cohorts and their slice cache,
the annotation loop of one run, the study runner (serial or Ray) and the report (tables and curves).

``spatial-al experiment run PROTOCOL --data DIR|demo --output DIR`` is the command line; :func:`run_study` the
Python entry.
"""

from .config import ConfigError, ExperimentConfig
from .protocols import PROTOCOLS, resolve_config
from .runner import StudyRequest, run_study
from .units import write_report

__all__ = [
    "PROTOCOLS",
    "ConfigError",
    "ExperimentConfig",
    "StudyRequest",
    "resolve_config",
    "run_study",
    "write_report",
]
