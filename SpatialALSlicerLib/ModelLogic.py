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


def updateModel(
    volumeNode,
    segmentationNode,
    segmentIds,
    modelPath,
    annotatedSlices=None,
    sliceAxis="axial",
    preset=None,
    device="auto",
    progress=None,
    **trainingOptions,
):
    """Train a model on the annotated slices, or fine-tune the one at ``modelPath`` (the next round).

    Args:
        volumeNode: the scan.
        segmentationNode: the segmentation; only its annotated slices are read as labels.
        segmentIds: segments to learn (None: all); a model at ``modelPath`` must know exactly these.
        modelPath: checkpoint (.pt) to fine-tune when it exists; written after every epoch and at the end.
        annotatedSlices: annotated slices (None: those recorded in the segments).
        sliceAxis: 0, 1, 2 (KJI array axis) or a plane name.
        preset: model preset for a new model (None: the CPU default).
        device: "auto", "cpu", "cuda", ...
        progress: progress reporter; cancel stops before the next batch (the last epoch's checkpoint stays).
        **trainingOptions: fields of :class:`spatial_al.training.TrainingConfig` (e.g. max_epochs=20).

    Returns:
        :class:`spatial_al.learning.TrainingOutcome`.
    """
    from spatial_al.learning import train_on_stack
    from spatial_al.training import TrainingConfig, read_checkpoint

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
    return train_on_stack(
        stackFromNodes(volumeNode, segmentationNode, segmentIds, axis),
        annotatedSlices,
        preset=preset,
        resume=resume,
        training=base.with_options(**trainingOptions),
        device=device,
        progress=progress,
        checkpoint_path=modelPath,
    )


def loadModel(modelPath, device="auto"):
    """(model, torch device) of the checkpoint at ``modelPath``, on ``device``; raises ValueError naming a missing
    or unreadable file."""
    from spatial_al.device import resolve_device
    from spatial_al.training import load_model

    torchDevice = resolve_device(device)
    model, _ = load_model(modelPath, torchDevice)
    return model, torchDevice


def predictSegmentation(volumeNode, modelPath, device="auto", progress=None):
    """Segment the volume with the model at ``modelPath`` into a new segmentation node named
    "<volume> (model prediction)" (no existing segment is touched); returns the node."""
    import numpy as np

    from spatial_al.learning import predict_segmentation
    from spatial_al.volume import SliceStack

    model, torchDevice = loadModel(modelPath, device)
    image = MRMLAdapter.arrayFromVolumeNode(volumeNode)
    geometry = MRMLAdapter.volumeGeometry(volumeNode)
    stack = SliceStack(image, np.zeros(image.shape, np.uint8), (), geometry, model.config.slice_axis)
    segmentation = predict_segmentation(model, stack, torchDevice, progress=progress)
    name = f"{volumeNode.GetName()} (model prediction)"
    return MRMLAdapter.addSegmentationNode(volumeNode.GetScene(), segmentation, volumeNode, name)
