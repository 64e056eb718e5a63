"""Python packages the modules need, installed on first use with the user's consent (never at import).

torch comes from the PyTorch extension (SlicerPyTorch picks the build for the machine's GPU); it is installed
before the rest so that MONAI's torch requirement is already met and pip does not fetch another build. The rest
is listed in ``requirements.txt`` (Resources/ in the source tree, next to this file once installed). SimpleITK
ships with Slicer and is not reinstalled.

This file imports nothing of ``spatial_al``: it must work before the backend's dependencies exist.
"""

import functools
import importlib.metadata
import importlib.util
import os
import re
import shutil
import sys

import slicer

# Import name -> distribution name of what spatial_al imports (torch apart).
REQUIRED_MODULES = {
    "numpy": "numpy",
    "scipy": "scipy",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "nrrd": "pynrrd",
    "slicerio": "slicerio",
    "itk": "itk-morphologicalcontourinterpolation",
    "monai": "monai",
    "einops": "einops",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    "psutil": "psutil",
}
TORCH_REQUIREMENT = ">=2.2"
# declined: the user said no in this session, so opening a panel does not ask again (pressing an action does);
# met: everything was found installed (the check reads package metadata, too slow for every GUI update).
_asked = {"declined": False, "met": False}


def requirementsPath():
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (
        os.path.join(here, "requirements.txt"),
        os.path.join(here, "..", "Resources", "requirements.txt"),
    ):
        if os.path.isfile(candidate):
            return os.path.normpath(candidate)
    raise FileNotFoundError("requirements.txt of SpatialActiveLearning is missing; reinstall the extension.")


def versionTuple(text):
    """The leading numeric components of a version ("2.13.0+cpu" -> (2, 13, 0))."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def minimumVersions():
    """Distribution -> minimum version, from requirements.txt and torch's requirement."""
    minimums = {"torch": TORCH_REQUIREMENT.removeprefix(">=")}
    with open(requirementsPath()) as requirements:
        for line in requirements:
            match = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^\s,;#]*)", line)
            if match:
                minimums[match.group(1).lower()] = match.group(2)
    return minimums


def unmetRequirements():
    """What is missing ("monai") or too old ("numpy (1.21.0 installed, >=1.24 needed)"), torch first."""
    minimums = minimumVersions()
    unmet = []
    for module, distribution in {"torch": "torch", **REQUIRED_MODULES}.items():
        if importlib.util.find_spec(module) is None:
            unmet.append(distribution)
            continue
        try:
            installed = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue  # importable without package metadata (a development checkout): nothing to compare
        minimum = minimums.get(distribution.lower())
        if minimum and versionTuple(installed) < versionTuple(minimum):
            unmet.append(f"{distribution} ({installed} installed, >={minimum} needed)")
    return unmet


def missingDistributions():
    """Distribution names of :func:`unmetRequirements` (what to install or upgrade)."""
    return [requirement.split(" (")[0] for requirement in unmetRequirements()]


def dependenciesMet():
    """Whether every requirement is installed, at its minimum version; once true, remembered for the session."""
    if not _asked["met"]:
        _asked["met"] = not unmetRequirements()
    return _asked["met"]


def requireDependencies():
    """Raise RuntimeError naming what is missing or too old, and how to install it (for the Logic, used from the
    Python console without a panel that would offer to install)."""
    unmet = unmetRequirements()
    if unmet:
        raise RuntimeError(
            f"SpatialActiveLearning needs {', '.join(unmet)}. Open the Active Slice Selector or Spatial Propagation "
            f"module once to install them, or run: PythonSlicer -m pip install -r {requirementsPath()} (torch through "
            "the PyTorch extension)."
        )


def checkMissingDependenciesAreNamed(testCase, callLogic):
    """A step of a module's self-test: before the packages are installed (the Extensions build, a first start) the
    module loads, and ``callLogic()`` names what is missing and how to install it, instead of failing on an import.
    Nothing to check when everything is installed."""
    missing = unmetRequirements()
    if not missing:
        return testCase.delayDisplay("Every dependency is installed")
    testCase.delayDisplay(f"Without {', '.join(missing)}: the Logic asks for them")
    with testCase.assertRaisesRegex(RuntimeError, f"needs {re.escape(missing[0])}.*Open the Active Slice Selector"):
        callLogic()


def requiresDependencies(method):
    """Decorator for Logic methods: :func:`requireDependencies` first."""

    @functools.wraps(method)
    def checked(*args, **kwargs):
        requireDependencies()
        return method(*args, **kwargs)

    return checked


def loadedDistributions():
    """Distribution -> installed version of every package imported in this process (numpy, vtk, SimpleITK, ... in
    Slicer): what an install must not replace under the running application."""
    loaded = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        if module in sys.modules:
            for distribution in distributions:
                try:
                    loaded[distribution.lower()] = importlib.metadata.version(distribution)
                except importlib.metadata.PackageNotFoundError:
                    continue
    return loaded


def writeConstraints(folder, loaded, upgrading):
    """A pip constraints file in ``folder`` pinning every loaded distribution at its version, except those in
    ``upgrading`` (too old, so they must change); returns its path."""
    path = os.path.join(folder, "spatial-al-constraints.txt")
    kept = sorted(name for name in loaded if name not in {n.lower() for n in upgrading})
    with open(path, "w") as constraints:
        constraints.write("".join(f"{name}=={loaded[name]}\n" for name in kept))
    return path


def upgradedWhileLoaded(before):
    """``[(distribution, old version, new version)]`` of the loaded distributions an install changed."""
    changed = []
    for name, version in before.items():
        try:
            now = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if now != version:
            changed.append((name, version, now))
    return changed


def ensureDependencies(askConfirmation=True, askAgain=False):
    """Install what is missing or too old; returns True when everything is met, False when the user declined.

    Asked once per session when a panel opens: after a "no", it returns False without asking again, unless
    ``askAgain`` (the user pressed an action that needs the packages). pip runs with constraints that keep every
    package Slicer has loaded (numpy, vtk, SimpleITK, ...) at its version; when a loaded package had to change all
    the same (it was too old), the user is asked to restart Slicer.

    Raises:
        RuntimeError: torch is missing and the PyTorch extension is not installed.
    """
    unmet = unmetRequirements()
    if not unmet:
        return True
    if _asked["declined"] and not askAgain:
        return False
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
        "SpatialActiveLearning needs these Python packages, which are missing or too old:\n\n"
        + "\n".join(unmet)
        + "\n\nInstall them now? This can take several minutes (torch is large).",
        "Install dependencies",
    ):
        _asked["declined"] = True
        return False
    _asked["declined"] = False
    missing = missingDistributions()
    if "torch" in missing:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError(
                "torch is needed: install the 'PyTorch' extension from the Extensions Manager, restart Slicer, "
                "and try again."
            ) from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
            return False
    loaded = loadedDistributions()
    folder = slicer.util.tempDirectory("SpatialAL-install-")
    try:
        slicer.util.pip_install(["-c", writeConstraints(folder, loaded, missing), "-r", requirementsPath()])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    changed = upgradedWhileLoaded(loaded)
    if changed and slicer.util.confirmYesNoDisplay(
        "These packages were upgraded while Slicer had them loaded:\n\n"
        + "\n".join(f"{name} {old} -> {new}" for name, old, new in changed)
        + "\n\nRestart Slicer now so that the new versions are used?",
        "Restart Slicer",
    ):
        slicer.util.restart()
    return not missingDistributions()
