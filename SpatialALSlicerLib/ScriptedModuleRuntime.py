"""What Slicer's application gives a scripted module's Logic, for running that Logic outside the application.

slicer-core has Slicer's MRML and module-logic classes but not the application: no ``slicer.mrmlScene``,
``slicer.app`` or ``slicer.modules``, and none of the application's pure-Python modules the scripted-module template
imports (``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``, ``slicer.i18n``). :func:`install` sets
minimal versions of those on the ``slicer`` package around a scene; :func:`uninstall` removes them. The browser front
end (``SpatialALWeb``) runs the modules' Logic on trame-slicer's scene this way, and the tests on a
:class:`~SpatialALSlicerLib.HeadlessScene.HeadlessScene`. Only what the Logic and Test classes use is provided: no Qt.
"""

import sys
import tempfile
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

    @property
    def temporaryPath(self):
        return tempfile.gettempdir()

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


def install(headless):
    """Make ``slicer`` look like the application's around ``headless``: an object with ``scene``,
    ``applicationLogic`` and ``moduleLogics`` (module name -> logic), as a HeadlessScene has."""
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
