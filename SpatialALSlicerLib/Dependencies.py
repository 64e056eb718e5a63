"""Python packages the modules need, installed on first use with the user's consent (never at import).

torch comes from the PyTorch extension (SlicerPyTorch picks the build for the machine's GPU); it is installed
before the rest so that MONAI's torch requirement is already met and pip does not fetch another build. The rest
is listed in ``requirements.txt`` (Resources/ in the source tree, next to this file once installed). SimpleITK
ships with Slicer and is not reinstalled.

This file imports nothing of ``spatial_al``: it must work before the backend's dependencies exist.
"""

import importlib.util
import os

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


def requirementsPath():
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (
        os.path.join(here, "requirements.txt"),
        os.path.join(here, "..", "Resources", "requirements.txt"),
    ):
        if os.path.isfile(candidate):
            return os.path.normpath(candidate)
    raise FileNotFoundError("requirements.txt of SpatialActiveLearning is missing; reinstall the extension.")


def missingDistributions():
    """Distributions whose module cannot be imported, torch included (as "torch")."""
    missing = [dist for module, dist in REQUIRED_MODULES.items() if importlib.util.find_spec(module) is None]
    if importlib.util.find_spec("torch") is None:
        missing.insert(0, "torch")
    return missing


def ensureDependencies(askConfirmation=True):
    """Install what is missing; returns True when everything is importable, False when the user declined.

    Raises:
        RuntimeError: torch is missing and the PyTorch extension is not installed.
    """
    missing = missingDistributions()
    if not missing:
        return True
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
        "SpatialActiveLearning needs these Python packages, which are not installed yet:\n\n"
        + ", ".join(missing)
        + "\n\nInstall them now? This can take several minutes (torch is large).",
        "Install dependencies",
    ):
        return False
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
