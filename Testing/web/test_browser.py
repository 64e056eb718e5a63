"""The browser app end to end: `spatial-al web` started as a user starts it, driven in Debian's Chromium (headless,
through playwright, no browser download). Screenshots of each step are kept under ``test-artifacts/web`` (or
``$SPATIAL_AL_TEST_ARTIFACTS``)."""

import os
import re
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import slicerio

pytest.importorskip("trame_slicer", reason="the web extra is not installed (make web)")
sync_api = pytest.importorskip("playwright.sync_api", reason="the web extra is not installed (make web)")

from spatial_al.annotation_record import SliceRecord  # noqa: E402
from SpatialALWeb.launch import START_SECONDS, ServerProcess  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
REPOSITORY = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("SPATIAL_AL_TEST_ARTIFACTS", REPOSITORY / "test-artifacts")) / "web"
ACTION_SECONDS = 30

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)"
)


def worker_processes(server: ServerProcess) -> list[psutil.Process]:
    """The background-job processes the server started (the worker behind its launcher included)."""
    found = []
    for process in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if "spatial_al.worker" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture(scope="module")
def chromium():
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("web") / "output")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def app_page(chromium, demo_server):
    page = chromium.new_page(viewport={"width": 1400, "height": 900})
    page.goto(demo_server.url)
    page.get_by_test_id("rank").wait_for(timeout=START_SECONDS * 1000)
    yield page
    page.close()


def message(page) -> str:
    alert = page.get_by_test_id("message")
    return alert.inner_text() if alert.count() else ""


def press(page, name: str, expected: str, screenshot: str | None = None) -> str:
    """Click the control ``name`` and wait until the page's message matches ``expected`` (a regular expression)."""
    before = message(page)
    page.get_by_test_id(name).click()
    deadline = time.monotonic() + ACTION_SECONDS
    while time.monotonic() < deadline:
        text = message(page)
        if text != before and re.search(expected, text):
            break
        page.wait_for_timeout(50)
    else:
        raise AssertionError(f"After {name}, the page says {message(page)!r}, not {expected!r}.")
    if screenshot:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{screenshot}.png"))
    return text


def paint_stroke(page) -> None:
    """Paint with the Segment Editor's brush across the middle of the axial view (the large view on the left)."""
    page.locator("button:has(i.mdi-brush)").first.click()
    box = page.locator("img.image-display-area").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 20, y, steps=4)
    page.mouse.down()
    page.mouse.move(x + 20, y, steps=10)
    page.mouse.up()
    page.wait_for_timeout(1000)  # the stroke's last events reach the server


def view_pixels(page) -> list[np.ndarray]:
    """Each view's image as the page shows it, (H, W, 3) uint8 RGB, the axial view first."""
    from io import BytesIO

    from PIL import Image

    views = page.locator("img.image-display-area")
    return [np.asarray(Image.open(BytesIO(views.nth(i).screenshot())).convert("RGB")) for i in range(views.count())]


def test_the_views_fit_the_volume_once_the_page_has_sized_them(app_page):
    page = app_page
    page.wait_for_timeout(2000)  # the fit follows the last resize of the page's layout
    axial, *others = view_pixels(page)
    height, width = axial.shape[:2]
    # row brightness across the middle of the view (away from its corner icon and its slider)
    brightness = axial[:, width // 3 : 2 * width // 3].mean(axis=(1, 2))
    fraction = lambda low, high: brightness[int(low * height) : int(high * height)]  # noqa: E731
    # the tall, narrow axial view shows the whole 390 mm square slice: background above and below it, the body
    # in the middle (before, the fit made at 300 x 300 filled the view with a zoomed-in part of the slice)
    assert fraction(0.08, 0.25).max() < 10 and fraction(0.75, 0.92).max() < 10
    assert fraction(0.45, 0.55).mean() > 40

    def coloured(view):  # the fraction of strongly coloured pixels (the CT preset's bones are orange)
        return (np.abs(view[..., 0].astype(int) - view[..., 2]) > 60).mean()

    # no volume rendering by default (seconds per render on llvmpipe); switched on, the fitted 3D view shows it
    page.get_by_test_id("volume-rendering").locator("input").check()
    page.wait_for_timeout(3000)
    rendered = view_pixels(page)[1:]
    changes = [np.abs(after.astype(int) - before).mean() for before, after in zip(others, rendered, strict=True)]
    threed = int(np.argmax(changes))
    assert changes[threed] > 3 and sorted(changes)[-2] < 1  # the 3D view changed, and only it
    assert coloured(rendered[threed]) > coloured(others[threed]) + 0.01
    page.get_by_test_id("volume-rendering").locator("input").uncheck()


def test_the_annotation_loop_in_the_browser(app_page, demo_server):
    page = app_page
    start = demo_server.output / "demo-data" / "CTChest.seg.nrrd"
    page.get_by_test_id("budget").locator("input").fill("5")
    press(page, "rank", r"5 slices to annotate \(fixed_interval\)", "1-ranked")
    rows = page.locator("tr[data-slice]")
    assert rows.count() == 5
    target = int(rows.first.get_attribute("data-slice"))
    rows.first.click()
    page.wait_for_function(
        f"() => document.querySelector('[data-testid=view-slice]').innerText.includes('slice {target} ')"
    )
    paint_stroke(page)
    press(page, "mark-annotated", f"Slice {target} is annotated", "2-marked")
    assert rows.first.get_attribute("data-status") == "annotated"
    press(page, "preview", r"Preview \(not written yet\): \d+ slices propagated", "3-preview")
    press(page, "apply", r"^\d+ slices propagated from 5 annotated slices \(sdf\)", "4-applied")
    press(page, "undo", "back as they were before the last propagation. The propagation is previewed again")
    press(page, "apply", r"^\d+ slices propagated from 5 annotated slices \(sdf\)")
    press(page, "save", "Saved CTChest.seg.nrrd, CTChest.mrb, CTChest-queried-slices.csv", "5-saved")
    with page.expect_download(timeout=ACTION_SECONDS * 1000) as download:
        page.get_by_test_id("download-CTChest.seg.nrrd").click()
    downloaded = demo_server.output.parent / "downloaded.seg.nrrd"
    download.value.save_as(downloaded)
    assert download.value.suggested_filename == "CTChest.seg.nrrd"
    assert downloaded.read_bytes() == (demo_server.output / "CTChest.seg.nrrd").read_bytes()

    before = slicerio.read_segmentation(str(start))
    saved = slicerio.read_segmentation(str(demo_server.output / "CTChest.seg.nrrd"))
    first = saved["segments"][0]  # ribs: the segment the brush paints first
    old = np.transpose(before["voxels"], (2, 1, 0)) == first["labelValue"]
    new = np.transpose(saved["voxels"], (2, 1, 0)) == first["labelValue"]
    assert not old[target].any() and 0 < new[target].sum() < 2000  # the stroke, on the slice marked annotated
    record = SliceRecord.from_tags(first["tags"])
    assert record.annotated == tuple(sorted({0, 11, 22, 33, target}))
    for index in (0, 11, 22, 33):  # annotated slices are untouched
        np.testing.assert_array_equal(new[index], old[index])
    # pseudo-labels fill the slices between two annotated slices that hold the structures (11 and 22)
    anything = np.transpose(saved["voxels"], (2, 1, 0)) != 0
    assert set(range(12, 22)) <= set(record.propagated) and all(anything[k].any() for k in range(12, 22))


def test_a_stroke_after_a_preview_updates_the_preview_by_itself(app_page):
    page = app_page
    press(page, "preview", r"^Preview \(not written yet\)")
    paint_stroke(page)
    page.wait_for_function(
        "() => document.body.innerText.includes('Preview updated after your edit (not written yet)')",
        timeout=ACTION_SECONDS * 1000,
    )
    assert page.get_by_test_id("apply").is_enabled()
    page.get_by_test_id("auto-update").locator("input").uncheck()
    paint_stroke(page)
    page.wait_for_function(
        "() => document.body.innerText.includes('the preview was dropped; press Preview again')",
        timeout=ACTION_SECONDS * 1000,
    )


@pytest.mark.parametrize("trigger", ["sal_open", "sal_download"])
def test_a_name_leading_out_of_the_data_folder_is_refused_in_the_page(app_page, trigger):
    page = app_page
    before = message(page)
    page.evaluate(f"() => window.trame.trigger('{trigger}', ['../../etc/passwd'])")
    page.wait_for_function(f"() => !document.body.innerText.includes({before!r})")
    assert "lies outside the folder this server was started on" in message(page)


def test_a_model_strategy_without_a_model_is_a_message_and_the_server_stays_up(app_page):
    page = app_page
    page.evaluate("() => window.trame.state.set('sal_strategy', 'entropy')")
    page.wait_for_function("() => document.body.innerText.includes('entropy: under a second on cpu')")  # the cost
    text = press(page, "rank", "Ranking failed")
    assert "model" in text and "Traceback" not in page.inner_text("body")
    page.evaluate("() => window.trame.state.set('sal_strategy', 'fixed_interval')")
    press(page, "rank", "slices to annotate")


def test_cancelling_a_model_update_ends_its_processes_and_writes_no_checkpoint(app_page, demo_server):
    page = app_page
    page.get_by_test_id("update-model").click()
    page.get_by_test_id("cancel").wait_for(timeout=ACTION_SECONDS * 1000)
    deadline = time.monotonic() + ACTION_SECONDS
    while not worker_processes(demo_server) and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = worker_processes(demo_server)
    assert workers, "Update model started no worker process"
    assert page.get_by_test_id("rank").is_enabled()  # the page stays responsive
    page.get_by_test_id("cancel").click()
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, f"workers still running 5 s after Cancel: {[p.pid for p in alive]}"
    page.wait_for_function("() => document.body.innerText.includes('cancelled')", timeout=ACTION_SECONDS * 1000)
    written = [*demo_server.output.glob("*model*"), *demo_server.output.glob(".*model*")]
    assert not written, f"a checkpoint (or part of one) was written: {written}"


def test_without_the_secret_a_connection_is_refused(chromium, tmp_path):
    server = ServerProcess(tmp_path / "output", host="0.0.0.0")
    try:
        assert "?secret=" in server.url
        stranger = chromium.new_page()
        stranger.goto(server.url.split("?")[0])
        stranger.wait_for_timeout(5000)
        assert stranger.get_by_test_id("rank").count() == 0
        assert "Active Slice Selector" not in stranger.inner_text("body")
        invited = chromium.new_page()
        invited.goto(server.url)
        invited.get_by_test_id("rank").wait_for(timeout=START_SECONDS * 1000)
    finally:
        server.stop()


def test_the_case_picker_opens_a_dicom_series_and_save_writes_its_dicom_seg(chromium, tmp_path):
    import shutil

    from spatial_al.data import chest_ct_files
    from spatial_al.data.dicom_series import write_ct_series
    from spatial_al.demo import starting_segmentation
    from spatial_al.io import choose_series, load_stack, read_volume, write_segmentation

    data = tmp_path / "data"
    image, geometry = read_volume(chest_ct_files()[0])
    write_ct_series(data / "dicom", image, geometry, series_description="Chest 3.0 mm")
    write_segmentation(data / "dicom" / "start.dcm", starting_segmentation(), source=choose_series(data / "dicom"))
    shutil.copyfile(chest_ct_files()[0], data / "chest.nrrd")
    server = ServerProcess(tmp_path / "output", data=data)
    try:
        page = chromium.new_page(viewport={"width": 1400, "height": 900})
        page.goto(server.url)
        page.get_by_test_id("rank").wait_for(timeout=START_SECONDS * 1000)
        page.get_by_test_id("case").click()
        option = page.get_by_role("option", name=re.compile(r"^Chest-3-0-mm-"))
        name = option.inner_text().strip()
        option.click()
        page.wait_for_function(
            f"() => document.body.innerText.includes('Opened {name}')", timeout=ACTION_SECONDS * 1000
        )
        assert "annotated: 0, 11, 22, 33" in page.get_by_test_id("view-slice").inner_text()  # the SEG's record
        press(page, "save", f"Saved {name}.seg.nrrd, {name}.mrb, {name}.dcm", "6-dicom-saved")
        saved = tmp_path / "output"
        nrrd = slicerio.read_segmentation(str(saved / f"{name}.seg.nrrd"))
        stack = load_stack(data / "dicom", saved / f"{name}.dcm")
        np.testing.assert_array_equal(stack.label_layers[0], np.transpose(nrrd["voxels"], (2, 1, 0)))
    finally:
        server.stop()
