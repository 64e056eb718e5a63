"""VTK observers that do not keep their owner alive.

A Logic that observes the scene with a bound method (``scene.AddObserver(event, self.onClose)``) is kept alive by the
scene for as long as the scene lives, with everything it holds (previews of whole volumes), and one more observer is
added by every Logic made from the Python console. :func:`observeWeakly` holds the owner weakly instead: once the owner
is gone its observer removes itself, and :func:`removeObservations` removes it at once (the owner's cleanup).
"""

import weakref


def observeWeakly(vtkObject, event, boundMethod, priority=0.0):
    """Call ``boundMethod(caller, event)`` on ``event`` of ``vtkObject`` while the method's object lives; returns the
    (object, tag) observation for :func:`removeObservations`."""
    method = weakref.WeakMethod(boundMethod)
    tag = None

    def forward(caller, eventName):
        target = method()
        if target is None:
            caller.RemoveObserver(tag)
            return
        target(caller, eventName)

    tag = vtkObject.AddObserver(event, forward, priority)
    return vtkObject, tag


def removeObservations(observations):
    """Remove observers added by :func:`observeWeakly` (those already gone are skipped)."""
    for vtkObject, tag in observations:
        if vtkObject is not None and vtkObject.GetCommand(tag) is not None:
            vtkObject.RemoveObserver(tag)
