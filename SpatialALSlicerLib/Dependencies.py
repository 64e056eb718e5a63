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
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
}
TORCH_REQUIREMENT = ">=2.2"
_asked = {"declined": False}  # the user declined in this session: no panel asks again


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


def requiresDependencies(method):
    """Decorator for Logic methods: :func:`requireDependencies` first."""

    @functools.wraps(method)
    def checked(*args, **kwargs):
        requireDependencies()
        return method(*args, **kwargs)

    return checked


def ensureDependencies(askConfirmation=True):
    """Install what is missing or too old; returns True when everything is met, False when the user declined (asked
    once per session: after a "no" it returns False without asking again).

    Raises:
        RuntimeError: torch is missing and the PyTorch extension is not installed.
    """
    unmet = unmetRequirements()
    if not unmet:
        return True
    if _asked["declined"]:
        return False
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
        "SpatialActiveLearning needs these Python packages, which are missing or too old:\n\n"
        + "\n".join(unmet)
        + "\n\nInstall them now? This can take several minutes (torch is large).",
        "Install dependencies",
    ):
        _asked["declined"] = True
        return False
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
    slicer.util.pip_install(["-r", requirementsPath()])
    return not missingDistributions()
