"""The scripted modules' Logic and their own Test classes, on slicer-core's MRML classes."""


def test_active_slice_selector_module_test_passes(slicer_modules):
    result = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorTest("runTest").run()
    assert result.wasSuccessful(), result.errors + result.failures


def test_spatial_propagation_module_test_passes(slicer_modules):
    result = slicer_modules["SpatialPropagation"].SpatialPropagationTest("runTest").run()
    assert result.wasSuccessful(), result.errors + result.failures
