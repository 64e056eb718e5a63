"""Stands in for the Qt plumbing the modules' panels use, so their Widget classes run in pytest (no event loop, no
widgets: a timer a test fires, shortcuts a test presses). What the application gives the Logic (``slicer.mrmlScene``,
``slicer.app``, the scripted-module template) is :mod:`SpatialALSlicerLib.ScriptedModuleRuntime`, re-exported here.
"""

import types

from SpatialALSlicerLib.ScriptedModuleRuntime import install, uninstall  # noqa: F401  (the tests' entry)


class QTimer:
    """The part of Qt's timer the panels use; a test fires it by calling :meth:`fire` (there is no event loop)."""

    def __init__(self):
        self.active, self.interval, self.slots = False, 0, []

    def setInterval(self, milliseconds):
        self.interval = milliseconds

    def setSingleShot(self, single):
        pass

    def connect(self, signal, slot):
        self.slots.append(slot)

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    def fire(self):
        for slot in self.slots:
            slot()


class QKeySequence:
    def __init__(self, text):
        self.text = text


class MainWindow:
    """Stands in for Slicer's main window: keeps the shortcuts made on it."""

    def __init__(self):
        self.shortcuts = []


class QShortcut:
    """A keyboard shortcut on a parent widget; a test presses it with :meth:`press`."""

    def __init__(self, parent):
        self.parent, self.key, self.slots = None, None, []
        self.setParent(parent)

    def setKey(self, key):
        self.key = key

    def connect(self, signal, slot):
        self.slots.append(slot)

    def disconnect(self, signal):
        self.slots.clear()

    def setParent(self, parent):
        if self.parent is not None:
            self.parent.shortcuts.remove(self)
        self.parent = parent
        if parent is not None:
            parent.shortcuts.append(self)

    def press(self):
        for slot in self.slots:
            slot()


def qt_module():
    """A ``qt`` module with :class:`QTimer`, :class:`QShortcut` and the wait cursor, for the panels' plumbing (no
    widgets)."""
    module = types.ModuleType("qt")
    module.QTimer = QTimer
    module.QShortcut = QShortcut
    module.QKeySequence = QKeySequence
    module.Qt = types.SimpleNamespace(WaitCursor=3)
    return module
