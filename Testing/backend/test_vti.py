"""The .vti reader against pyvista/VTK reading the same files (compressed, uncompressed, and the frog)."""

import numpy as np
import pytest

from spatial_al.io.vti import read_vti

pyvista = pytest.importorskip("pyvista")


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_read_vti_matches_what_vtk_wrote(tmp_path, compression, dtype):
    values = np.random.default_rng(0).integers(0, 200, size=(7, 5, 3)).astype(dtype)  # (z, y, x)
    grid = pyvista.ImageData(dimensions=(3, 5, 7), spacing=(0.5, 0.8, 2.0), origin=(1.0, -2.0, 3.0))
    grid.point_data["labels"] = values.ravel()  # x varies fastest
    path = tmp_path / "image.vti"
    grid.save(path, compression=compression)
    array, geometry = read_vti(path)
    np.testing.assert_array_equal(array, values)
    assert array.dtype == dtype
    assert geometry.spacing == (0.5, 0.8, 2.0) and geometry.origin == (1.0, -2.0, 3.0)


def test_the_frog_tissue_label_map_reads_as_pyvista_reads_it():
    from spatial_al.data import frog_tissues_file, frog_tissues_stack

    path = frog_tissues_file()
    reference = pyvista.read(path)
    array, geometry = read_vti(path)
    assert array.shape == (136, 470, 500) and geometry.spacing == (1.0, 1.0, 1.5)
    np.testing.assert_array_equal(array.ravel(), np.asarray(reference.point_data.active_scalars))
    stack = frog_tissues_stack()
    assert stack.image is None and len(stack.segments) == len(np.unique(array)) - 1
