"""Whether a trained model can serve a query strategy or a propagation method on a segmentation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .volume import Segment

# What a component's model must be able to do, by the name of the requirement.
MODEL_KINDS = {
    "segmentation": "any trained model (spatial-al train)",
    "star": "a STAR model (spatial-al train --preset star-small or star)",
    "structure": "an SBC-AL model (spatial-al train --preset sbc-small or sbc)",
}


def check_model(
    model: Any,
    component: str,
    kind: str | None,
    axis: int,
    segment_sets: Sequence[tuple[str, Sequence[Segment]]] = (),
    model_free: str = "",
) -> None:
    """Raise ValueError when ``component`` needs a model that is missing, of the wrong kind, cut along another
    axis, or trained on classes that are not the segments (when they are known).

    Args:
        model: the model given, or None.
        component: how errors name the component, e.g. "The strategy 'entropy'".
        kind: a key of :data:`MODEL_KINDS`, or None when the component needs no model.
        axis: the slice axis the component works along.
        segment_sets: (name of the volume, its segments) for each volume; empty segments are not checked.
        model_free: the model-free alternatives to suggest when no model is given.
    """
    if model is None:
        if kind is not None:
            alternative = f", or use {model_free}" if model_free else ""
            raise ValueError(
                f"{component} needs a trained model and none was given: pass --model CKPT on the command line or "
                f"choose the model file in Slicer ({MODEL_KINDS[kind]}){alternative}."
            )
        return
    config = model.config
    if kind == "star" and not config.star:
        raise ValueError(f"{component} needs {MODEL_KINDS['star']}; this model is {config.describe()}.")
    if kind == "structure" and not config.structure_heads:
        raise ValueError(f"{component} needs {MODEL_KINDS['structure']}; this model is {config.describe()}.")
    if config.slice_axis != axis:
        raise ValueError(
            f"The model was trained on slices along array axis {config.slice_axis} and {component[0].lower()}"
            f"{component[1:]} cuts along axis {axis}; use axis {config.slice_axis} or train a model on this axis."
        )
    from .training.data import match_classes

    for name, segments in segment_sets:
        if segments:
            try:
                match_classes(segments, config.class_names)
            except ValueError as error:
                raise ValueError(f"{name}: the model does not match the segmentation. {error}") from None
