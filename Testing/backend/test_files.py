"""Atomic writes: an interrupted or killed write leaves the previous file (or none), never a partial one."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from spatial_al.files import atomic_path, write_text_atomic
from spatial_al.io import Segmentation, write_segmentation
from spatial_al.volume import Geometry, Segment


def segmentation(value=1, shape=(6, 8, 8)):
    labels = np.zeros(shape, np.uint8)
    labels[2:4, 2:6, 2:6] = value
    return Segmentation(labels[np.newaxis], (Segment("organ", value),), Geometry(shape))


def test_an_interrupted_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "record.json"
    write_text_atomic(target, "old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as temporary:
        temporary.write_text("half of the new")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["record.json"]


@pytest.mark.parametrize("name", ["out.seg.nrrd", "out.nii.gz"])
def test_a_segmentation_writer_failing_midway_leaves_the_previous_segmentation(tmp_path, monkeypatch, name):
    target = tmp_path / name
    write_segmentation(target, segmentation(1))

    def broken(*args, **kwargs):
        path = next(a for a in args if isinstance(a, str))  # slicerio(path, ...), sitk(image, path, ...)
        with open(path, "wb") as file:
            file.write(b"NRRD0004\n")  # a truncated header, then the process is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(slicerio, "write_segmentation", broken)
    monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(KeyboardInterrupt):
        write_segmentation(target, segmentation(2))
    monkeypatch.undo()
    if name.endswith(".seg.nrrd"):
        assert slicerio.read_segmentation(str(target))["segments"][0]["labelValue"] == 1
    else:
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(target))).max() == 1
    assert [p.name for p in tmp_path.iterdir()] == [name]


WRITER = """
import sys
import numpy as np
from spatial_al.io import Segmentation, write_segmentation
from spatial_al.volume import Geometry, Segment
labels = np.zeros((64, 128, 128), np.uint8)
labels[10:50, 20:100, 20:100] = 1
segmentation = Segmentation(labels[None], (Segment("organ", 1),), Geometry(labels.shape))
print("ready", flush=True)
while True:
    write_segmentation(sys.argv[1], segmentation)
"""


def test_a_process_killed_while_writing_leaves_only_complete_files_under_the_final_name(tmp_path):
    target = tmp_path / "out.nii.gz"
    for delay in (0.3, 0.7, 1.1):
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "ready"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        if target.exists():  # whatever was under the final name is a whole file
            written = sitk.GetArrayFromImage(sitk.ReadImage(str(target)))
            assert written.shape == (64, 128, 128) and int(written.sum()) == 40 * 80 * 80
