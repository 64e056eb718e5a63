"""Slicer-side library shared by the ActiveSliceSelector and SpatialPropagation modules.

``MRMLAdapter``: the one adapter between MRML nodes and the ``spatial_al`` backend's arrays (KJI order).
``HeadlessScene``: what the Slicer application sets up around a scene, for slicer-core without the application.
``SessionScene``: a Slicer scene (``.mrb``) of an annotation session, for the demo and batch runs.

``BatchCommand``: the ``spatial-al`` command line run by Slicer headless (``BATCH_SCRIPT`` is its path).

Needs Slicer's MRML classes: inside Slicer, or ``pip install "slicer-core==5.11.0.*"``. No Qt.
"""

import os

BATCH_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "BatchCommand.py")


def batchHelp(translate) -> str:
    """The Help paragraph on running the extension without the GUI, with :data:`BATCH_SCRIPT`'s path; ``translate``
    is the calling module's ``_``."""
    command = (
        f"Slicer --no-main-window --python-script {BATCH_SCRIPT} -- experiment run star --data demo --output study"
    )
    return translate(
        "Without the GUI (servers, batch studies): <code>{command}</code>; after <code>--</code> come the arguments of "
        "the spatial-al command line (experiment, rank, propagate, train, predict)."
    ).format(command=command)
