"""The Slicer extension's files agree with each other: .ui widgets, parameter nodes, CMake lists, requirements."""

import ast
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import tomllib

import spatial_al

REPOSITORY = Path(__file__).resolve().parents[1]
MODULES = ["ActiveSliceSelector", "SpatialPropagation"]


def module_source(name):
    return (REPOSITORY / name / f"{name}.py").read_text()


def ui_widgets(name):
    tree = ElementTree.parse(REPOSITORY / name / "Resources" / "UI" / f"{name}.ui")
    widgets = {w.get("name"): w for w in tree.iter("widget")}
    bound = {}
    for widget_name, widget in widgets.items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[widget_name] = prop.find("string").text
    return widgets, bound


def parameter_fields(name):
    tree = ast.parse(module_source(name))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            getattr(d, "id", "") == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError(f"{name}.py has no @parameterNodeWrapper class")


@pytest.mark.parametrize("name", MODULES)
def test_module_file_follows_the_scripted_module_template(name):
    classes = {node.name for node in ast.parse(module_source(name)).body if isinstance(node, ast.ClassDef)}
    suffixes = ["", "ParameterNode", "Widget", "Logic", "Test"]
    assert {name + suffix for suffix in suffixes} <= classes


@pytest.mark.parametrize("name", MODULES)
def test_every_widget_the_module_uses_is_in_its_ui(name):
    widgets, _ = ui_widgets(name)
    used = set(re.findall(r"self\.ui\.(\w+)", module_source(name)))
    assert used and used <= set(widgets), used - set(widgets)


@pytest.mark.parametrize("name", MODULES)
def test_every_bound_widget_names_a_parameter_of_the_parameter_node(name):
    _, bound = ui_widgets(name)
    assert bound and set(bound.values()) <= parameter_fields(name)


@pytest.mark.parametrize("name", MODULES)
def test_module_cmake_lists_existing_files(name):
    cmake = (REPOSITORY / name / "CMakeLists.txt").read_text()
    assert f"set(MODULE_NAME {name})" in cmake
    for resource in re.findall(r"(Resources/\S+)", cmake):
        assert (REPOSITORY / name / resource.replace("${MODULE_NAME}", name)).is_file(), resource
    assert (REPOSITORY / name / "Testing" / "Python" / "CMakeLists.txt").is_file()


def test_extension_cmake_adds_both_modules_and_depends_on_pytorch():
    cmake = (REPOSITORY / "CMakeLists.txt").read_text()
    assert all(f"add_subdirectory({name})" in cmake for name in MODULES)
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in cmake
    assert "spatial_al SpatialALSlicerLib" in cmake


def requirement_names(lines):
    return {
        re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower()
        for line in lines
        if line.strip() and not line.startswith("#")
    }


def test_slicer_requirements_are_the_package_dependencies_but_torch_and_simpleitk():
    pyproject = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
    dependencies = requirement_names(pyproject["project"]["dependencies"])
    slicer_requirements = requirement_names((REPOSITORY / "Resources" / "requirements.txt").read_text().splitlines())
    assert slicer_requirements == dependencies - {"torch", "simpleitk"}


def test_dependency_installer_checks_every_requirement():
    tree = ast.parse((REPOSITORY / "SpatialALSlicerLib" / "Dependencies.py").read_text())
    assignment = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "REQUIRED_MODULES")
    distributions = {value.value.lower() for value in assignment.value.values}
    assert distributions == requirement_names((REPOSITORY / "Resources" / "requirements.txt").read_text().splitlines())


def test_package_version_matches_pyproject():
    pyproject = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
    assert spatial_al.__version__ == pyproject["project"]["version"]


def parameter_annotations(name):
    """Field name -> annotation source of the module's @parameterNodeWrapper class."""
    for node in ast.parse(module_source(name)).body:
        if isinstance(node, ast.ClassDef) and any(
            getattr(d, "id", "") == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {
                item.target.id: ast.unparse(item.annotation) for item in node.body if isinstance(item, ast.AnnAssign)
            }
    raise AssertionError(f"{name}.py has no @parameterNodeWrapper class")


@pytest.mark.parametrize("name", MODULES)
def test_every_integer_parameter_has_a_range(name):
    # without one, Slicer's connector gives the spin box the full int32 range over the .ui's, negatives included
    unbounded = [f for f, annotation in parameter_annotations(name).items() if annotation == "int"]
    assert not unbounded
    assert all("WithinRange" in a for a in parameter_annotations(name).values() if a.startswith("Annotated[int"))


@pytest.mark.parametrize("name", MODULES)
def test_shortcuts_are_key_sequences(name):
    calls = [node for node in ast.walk(ast.parse(module_source(name))) if isinstance(node, ast.Call)]
    shortcuts = [call for call in calls if getattr(call.func, "attr", "") == "setShortcut"]
    assert all(ast.unparse(call.args[0]).startswith("qt.QKeySequence(") for call in shortcuts)
