"""Segmentation networks (MONAI), STAR's spatial aggregation and SBC-AL's modules, built from a ModelConfig."""

from .config import DEFAULT_PRESET, PRESETS, ModelConfig, preset_config
from .network import STAGES, SegmentationModel

__all__ = ["DEFAULT_PRESET", "PRESETS", "STAGES", "ModelConfig", "SegmentationModel", "preset_config"]
