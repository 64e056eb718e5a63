"""The worker process that runs backend jobs for Slicer's panels: progress lines, result file, exit statuses."""

import json
import subprocess
import sys

import numpy as np
import pytest

from spatial_al.worker import read_result, run_job, write_job


def run_worker(folder):
    process = subprocess.run([sys.executable, "-m", "spatial_al.worker", str(folder)], capture_output=True, text=True)
    events = [json.loads(line) for line in process.stdout.splitlines()]
    return process.returncode, events


def test_a_job_reports_progress_then_writes_the_result_a_direct_call_gives(tmp_path):
    from spatial_al.io.segmentation import Segmentation
    from spatial_al.volume import Geometry, Segment

    labels = np.zeros((21, 24, 24), np.uint8)
    labels[[0, 10, 20], 6:18, 6:18] = 1
    segmentation = Segmentation(labels, (Segment("square", 1),), Geometry(labels.shape))
    arguments = {"segmentation": segmentation, "annotated": [0, 10, 20], "method": "sdf"}
    write_job(tmp_path, "propagate", arguments)
    status, events = run_worker(tmp_path)
    assert status == 0 and events[-1] == {"finished": True}
    progress = [event["progress"] for event in events[:-1]]
    assert progress and all(len(step) == 3 and step[0] <= step[1] for step in progress)
    result, direct = read_result(tmp_path), run_job("propagate", arguments)
    np.testing.assert_array_equal(result.propagated, direct.propagated)
    np.testing.assert_array_equal(result.pseudo_masks["square"], direct.pseudo_masks["square"])


def test_a_failing_job_says_why_and_writes_nothing(tmp_path):
    write_job(tmp_path, "rank", {"image": np.zeros((5, 8, 8), np.float32), "strategy": "entropi", "budget": 2})
    status, events = run_worker(tmp_path)
    assert status == 1 and "Did you mean 'entropy'" in events[-1]["failed"]
    assert not (tmp_path / "result.pkl").exists()
    with pytest.raises(ValueError, match="the jobs are train, predict, rank, train_and_rank, rank_volumes, propagate"):
        run_job("segment", {})
