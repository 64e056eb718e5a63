"""Slicer-side library shared by the ActiveSliceSelector and SpatialPropagation modules.

``MRMLAdapter``: the one adapter between MRML nodes and the ``spatial_al`` backend's arrays (KJI order).
``HeadlessScene``: what the Slicer application sets up around a scene, for slicer-core without the application.
``SessionScene``: a Slicer scene (``.mrb``) of an annotation session, for the demo and batch runs.

Needs Slicer's MRML classes: inside Slicer, or ``pip install "slicer-core==5.11.0.*"``. No Qt.
"""
