"""The ``spatial-al`` command line inside Slicer, for servers without a screen:

    Slicer --no-main-window --python-script <this file> -- experiment run star --data demo --output study
    Slicer --no-main-window --python-script <this file> -- rank|propagate|train|predict ...

Slicer passes the arguments after ``--`` to the script (``sys.argv[1:]``); run with any other Python, a leading
``--`` is dropped the same way. The script exits with the command's status (0 done, 2 bad input, 130 cancelled, 1 any
other error, its message on stderr), and names the fix when the extension's Python dependencies are not installed yet.
Every way out goes through ``sys.exit``: Slicer exits on SystemExit only, and an exception escaping a
``--python-script`` would leave a windowless Slicer running for ever. Both modules show this file's path in their Help
section.
"""

import os
import sys
import traceback

DEPENDENCIES = ("numpy", "scipy", "SimpleITK", "torch", "monai", "skimage", "sklearn", "slicerio", "tqdm", "matplotlib")


def missingDependencies():
    """The import names of the backend's dependencies that are not installed in this Python."""
    from importlib.util import find_spec

    return [name for name in DEPENDENCIES if find_spec(name) is None]


def main(argv):
    """Run ``spatial_al.cli.main`` on ``argv[1:]`` (a leading ``--`` dropped); returns its exit status."""
    packages = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds spatial_al and this library
    if packages not in sys.path:
        sys.path.insert(0, packages)
    arguments = list(argv[1:])
    if arguments[:1] == ["--"]:
        arguments = arguments[1:]
    missing = missingDependencies()
    if missing:
        requirements = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.txt")
        print(
            f"spatial-al: the Python packages {', '.join(missing)} are missing. Open the Active Slice Selector module "
            f"once in Slicer to install them, or run: PythonSlicer -m pip install -r {requirements} "
            "(torch through the PyTorch extension).",
            file=sys.stderr,
        )
        return 2
    from spatial_al import cli

    return cli.main(arguments)


def exitStatus(argv):
    """:func:`main`'s status, whatever happens: an exception is printed (message last, where a log reader looks)
    and gives 1; Ctrl+C gives 130."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("spatial-al: Cancelled (Ctrl+C).", file=sys.stderr)
        return 130
    except SystemExit as exit:  # argparse's: its status is kept
        if exit.code is None or isinstance(exit.code, int):
            return exit.code or 0
        print(exit.code, file=sys.stderr)
        return 1
    except Exception as error:  # MemoryError, OSError, RuntimeError, ...
        traceback.print_exc()
        print(f"spatial-al: failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(exitStatus(sys.argv))
