"""Stands in for what the Slicer application provides around slicer-core, so the modules' Logic runs in pytest.

slicer-core has Slicer's MRML and module-logic classes but not the application: no ``slicer.mrmlScene``,
``slicer.app`` or ``slicer.modules``, and none of the application's pure-Python modules the scripted-module template
imports (``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``, ``slicer.i18n``). :func:`install` sets
minimal versions of those on the ``slicer`` package around a :class:`HeadlessScene`; :func:`uninstall` removes them.
Only what the modules' Logic and Test classes use is provided, and of Qt only a timer and shortcuts
(:func:`qt_module`) for the panels' plumbing; the Qt widgets are not.
"""

import sys
import types
import unittest

STANDIN_MODULES = ("slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "slicer.i18n")


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent


class ScriptedLoadableModuleLogic:
    """Like Slicer's: one parameter node per module, a singleton vtkMRMLScriptedModuleNode in the scene."""

    def __init__(self, parent=None):
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        import slicer

        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", self.moduleName)
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=0):
        pass


def parameterNodeWrapper(cls):
    """Keeps the class; its instances wrap a parameter node (the GUI binding is Slicer's, not stood in for)."""

    def wrap(self, parameterNode):
        self.parameterNode = parameterNode

    return type(cls.__name__, (cls,), {"__init__": wrap, "__doc__": cls.__doc__})


def _annotation(*args, **kwargs):
    return (args, kwargs)


class _Application:
    def __init__(self, headless):
        self._headless = headless

    def applicationLogic(self):
        return self._headless.applicationLogic

    def processEvents(self):
        pass

    def layoutManager(self):
        return None

    def setOverrideCursor(self, cursor):
        pass

    def restoreOverrideCursor(self):
        pass

    def testingEnabled(self):
        return False


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


def install(headless):
    """Make ``slicer`` look like the application's around ``headless`` (a HeadlessScene)."""
    import slicer

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (
        ScriptedLoadableModule,
        ScriptedLoadableModuleWidget,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
    ):
        setattr(scripted, cls.__name__, cls)
    scripted.__all__ = [c for c in dir(scripted) if c.startswith("ScriptedLoadable")]
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = parameterNodeWrapper
    wrapper.WithinRange = wrapper.Choice = wrapper.Default = _annotation
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    for module in (scripted, wrapper, i18n):
        sys.modules[module.__name__] = module
        setattr(slicer, module.__name__.split(".")[1], module)
    slicer.mrmlScene = headless.scene
    slicer.app = _Application(headless)
    slicer.modules = types.SimpleNamespace(
        **{
            name.lower(): types.SimpleNamespace(logic=lambda logic=logic: logic)
            for name, logic in headless.moduleLogics.items()
        }
    )


def uninstall():
    import slicer

    for name in STANDIN_MODULES:
        sys.modules.pop(name, None)
        if hasattr(slicer, name.split(".")[1]):
            delattr(slicer, name.split(".")[1])
    for attribute in ("mrmlScene", "app", "modules"):
        if hasattr(slicer, attribute):
            delattr(slicer, attribute)
