"""Model training and prediction on MRML nodes ("Update model" after each annotation round), shared by the
modules' Logic classes. Computations are in :mod:`spatial_al.learning`; this file only moves nodes <-> arrays."""

import os

from SpatialALSlicerLib import MRMLAdapter


def stackFromNodes(volumeNode, segmentationNode, segmentIds, axis):
    """A backend :class:`SliceStack` of the volume and the chosen segments, on the volume's grid (KJI arrays)."""
    from spatial_al.volume import SliceStack

    segmentation = MRMLAdapter.segmentationFromNode(segmentationNode, volumeNode, segmentIds)
    image = MRMLAdapter.arrayFromVolumeNode(volumeNode)
    return SliceStack(image, segmentation.label_layers, segmentation.segments, segmentation.geometry, axis)


def updateModelJob(
    volumeNode,
    segmentationNode,
    segmentIds,
    modelPath,
    annotatedSlices=None,
    sliceAxis="axial",
    preset=None,
    device="auto",
    **trainingOptions,
):
    """Training on the annotated slices, or fine-tuning of the model at ``modelPath`` (the next round), as a
    :class:`~SpatialALSlicerLib.BackgroundWork.BackgroundJob` (``runHere()`` or ``start()``) whose result is a
    :class:`spatial_al.learning.TrainingSummary`; the model is written to ``modelPath``.

    Args:
        volumeNode: the scan.
        segmentationNode: the segmentation; only its annotated slices are read as labels.
        segmentIds: segments to learn (None: all); a model at ``modelPath`` must know exactly these.
        modelPath: checkpoint (.pt) to fine-tune when it exists; written as training improves and at the end.
        annotatedSlices: annotated slices (None: those recorded in the segments).
        sliceAxis: 0, 1, 2 (KJI array axis) or a plane name.
        preset: model preset for a new model (None: the CPU default).
        device: "auto", "cpu", "cuda", ...
        **trainingOptions: fields of :class:`spatial_al.training.TrainingConfig` (e.g. max_epochs=10).

    A cancel stops before the next batch; the last checkpoint stays and resumes the round.
    """
    from spatial_al.training import TrainingConfig, read_checkpoint
    from SpatialALSlicerLib.BackgroundWork import BackgroundJob

    axis = MRMLAdapter.sliceAxisIndex(volumeNode, sliceAxis)
    segmentIds = MRMLAdapter.segmentIdsOrAll(segmentationNode, segmentIds)
    if annotatedSlices is None:
        annotatedSlices = MRMLAdapter.recordedAnnotatedSlices(segmentationNode, segmentIds, axis)
    if not annotatedSlices:
        raise MRMLAdapter.MRMLInputError(
            "No slice is marked annotated yet: annotate slices and press 'Mark annotated' before updating the model."
        )
    resume = modelPath if os.path.isfile(modelPath) else None
    base = (read_checkpoint(resume).training_config if resume else None) or TrainingConfig()
    arguments = {
        "stack": stackFromNodes(volumeNode, segmentationNode, segmentIds, axis),
        "annotated": list(annotatedSlices),
        "preset": preset,
        "resume": resume,
        "training": base.with_options(**trainingOptions),
        "device": str(device),
        "checkpoint_path": modelPath,
    }
    return BackgroundJob("train", arguments, lambda summary: summary, "Training")


def predictionJob(volumeNode, modelPath, device="auto"):
    """The segmentation of the volume by the model at ``modelPath`` as a background job whose result is a new
    segmentation node named "<volume> (model prediction)" (no existing segment is touched)."""
    import numpy as np

    from spatial_al.volume import SliceStack
    from SpatialALSlicerLib.BackgroundWork import BackgroundJob

    if not os.path.isfile(modelPath):
        raise MRMLAdapter.MRMLInputError(f"No model file at {modelPath!r}: train one with 'Update model' first.")
    image = MRMLAdapter.arrayFromVolumeNode(volumeNode)
    stack = SliceStack(image, np.zeros(image.shape, np.uint8), (), MRMLAdapter.volumeGeometry(volumeNode), 0)

    def addNode(segmentation):
        name = f"{volumeNode.GetName()} (model prediction)"
        return MRMLAdapter.addSegmentationNode(volumeNode.GetScene(), segmentation, volumeNode, name)

    arguments = {"model_path": modelPath, "stack": stack, "device": str(device)}
    return BackgroundJob("predict", arguments, addNode, "Prediction")


def loadModel(modelPath, device="auto"):
    """(model, torch device) of the checkpoint at ``modelPath``, on ``device``; raises ValueError naming a missing
    or unreadable file."""
    from spatial_al.device import resolve_device
    from spatial_al.training import load_model

    torchDevice = resolve_device(device)
    model, _ = load_model(modelPath, torchDevice)
    return model, torchDevice
