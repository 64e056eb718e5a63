"""The backend never imports Slicer, Qt or VTK: every module imports with them made unimportable."""

import subprocess
import sys
import textwrap
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def test_every_backend_module_imports_without_slicer_qt_or_vtk():
    script = textwrap.dedent(
        """
        import importlib, pkgutil, sys

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"slicer", "slicer_core", "qt", "ctk", "vtk", "vtkmodules", "PythonQt"}:
                    raise ImportError(f"the backend imported {name}")

        sys.meta_path.insert(0, Refuse())
        import spatial_al
        names = [m.name for m in pkgutil.walk_packages(spatial_al.__path__, "spatial_al.")]
        for name in names:
            importlib.import_module(name)
        from spatial_al.cli import main
        assert main(["strategies"]) == 0
        print(len(names))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPOSITORY, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip().splitlines()[-1]) >= 15


def test_importing_the_backend_does_not_load_torch_or_itk():
    """Slicer starts fast and the modules load before heavy dependencies are installed."""
    script = (
        "import sys, spatial_al, spatial_al.io, spatial_al.session, spatial_al.cli; "
        "print(sorted({'torch', 'itk', 'monai'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPOSITORY, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
