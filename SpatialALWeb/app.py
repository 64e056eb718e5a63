"""The browser front end: trame-slicer's views and Segment Editor, and the annotation loop's panel beside them.

A peer of the Qt widgets: it lays out controls and wires them to :class:`~SpatialALWeb.session.AnnotationSession`,
which calls the modules' Logic. Every action reports in the page: what it did, or what went wrong and how to fix it
(the server log keeps the traceback); the page never shows a traceback and the server stays up.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Callable
from pathlib import Path

from trame.app import TrameApp
from trame.widgets import client, html
from trame.widgets import vuetify3 as v
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic import SegmentationAppLogic
from trame_slicer.app.ui import SegmentationAppUI
from trame_slicer.core import SlicerApp

from SpatialALSlicerLib import ScriptedModuleRuntime
from SpatialALWeb.folders import Case, inside
from SpatialALWeb.session import AnnotationSession

LOG = logging.getLogger("spatial_al.web")
JOB_POLL_SECONDS = 0.2
# A cancelled job that has not stopped by then (between two training steps, or still importing torch) is killed: the
# page promises its processes are gone within 5 s. Checkpoints are written whole or not at all, so nothing is lost.
CANCEL_GRACE_SECONDS = 3
FIT_SETTLE_SECONDS = 0.3  # a view's size is taken as final once the page has not resized it for this long
AUTO_PREVIEW_SECONDS = 0.5  # one preview after a burst of edits, as the Qt module and Fill between slices wait
# Ctrl+] / Ctrl+[ step through the queried slices, as in the Qt module; typing in a field is left alone.
STEP_SHORTCUTS = (
    "window.addEventListener('keydown', (e) => {"
    " if (!e.ctrlKey || ['INPUT', 'TEXTAREA'].includes(e.target.tagName)) return;"
    " if (e.key === ']') { e.preventDefault(); trigger('sal_step', [1]); }"
    " if (e.key === '[') { e.preventDefault(); trigger('sal_step', [-1]); } })"
)


def actionButton(text: str, trigger: str, testid: str, argument=None, **props):
    """A button that triggers the server action ``trigger`` (with ``argument``); ``testid`` names it for the
    browser tests (``data-testid``)."""
    call = f"trigger('{trigger}')" if argument is None else f"trigger('{trigger}', [{argument}])"
    props.setdefault("size", "small")
    return v.VBtn(text, click=call, raw_attrs=[f'data-testid="{testid}"'], **props)


def numberField(label: str, name: str, minimum: int, testid: str, **props):
    """A whole-number field bound to state ``sal_<name>``, at least ``minimum``."""
    return v.VNumberInput(
        label=label,
        v_model=(f"sal_{name}",),
        min=minimum,
        density="compact",
        raw_attrs=[f'data-testid="{testid}"'],
        **props,
    )


def switch(label: str, name: str, testid: str):
    """An on/off switch bound to state ``sal_<name>``."""
    return v.VSwitch(
        label=label,
        v_model=(f"sal_{name}",),
        density="compact",
        hide_details=True,
        color="primary",
        raw_attrs=[f'data-testid="{testid}"'],
    )


def namedChoice(label: str, name: str):
    """A list of the names in state ``sal_<name>s``, bound to ``sal_<name>``, with the chosen one's one-line
    explanation (``sal_<name>_help``) below it."""
    return v.VSelect(
        label=label,
        items=(f"sal_{name}s",),
        v_model=(f"sal_{name}",),
        density="compact",
        hint=(f"sal_{name}_help[sal_{name}]",),
        persistent_hint=True,
        raw_attrs=[f'data-testid="{name}"'],
    )


class AnnotationApp(TrameApp):
    """One annotation session per server process, on the cases of the data folder.

    Args:
        dataFolder: the folder the cases are read from (the only one read).
        cases: the scans the page lists (the first is opened).
        output: the folder Save and Update model write into.
        server: the trame server (None: trame's default).
    """

    def __init__(self, dataFolder: Path, cases: list[Case], output: Path, server=None):
        super().__init__(server)
        self.dataFolder = Path(dataFolder)
        self.server.enable_module(trame_slicer_module)
        self.cases = {case.name: case for case in cases}
        self.output = Path(output)
        self.slicer = SlicerApp()
        logics = {
            "Segmentations": self.slicer.segmentations_logic,
            "SubjectHierarchy": self.slicer.subject_hierarchy_logic,
        }
        ScriptedModuleRuntime.install(
            types.SimpleNamespace(scene=self.slicer.scene, applicationLogic=self.slicer.app_logic, moduleLogics=logics)
        )
        self.viewer = SegmentationAppLogic(self.server, self.slicer)
        self.viewerUI = SegmentationAppUI(self.server, self.viewer.layout_manager)
        self.viewer.set_ui(self.viewerUI)
        self.session: AnnotationSession | None = None
        self._observedSliceNode = None
        self._fitObservations: dict = {}  # render window -> observer tag, until the page first sizes the view
        self._autoPreview: asyncio.TimerHandle | None = None  # the preview an edit scheduled, until it runs
        self._setDefaults()
        self._paintOneSliceAtATime()
        self._buildPanel()
        self._bindControllers()
        self.state.change("sal_volume_rendering")(
            lambda sal_volume_rendering, **_: self._showVolumeRendering(sal_volume_rendering)
        )
        self.openCase(cases[0].name)
        self._fitViewsOnceSized()

    # -- state -------------------------------------------------------------------------------------------------------

    def _setDefaults(self):
        from SpatialALWeb.session import moduleLogics

        selector, propagation = moduleLogics()
        strategies, methods = selector.strategies(), propagation.methods()
        self.state.update(
            {
                "trame__title": "Spatial Active Learning",
                "sal_cases": list(self.cases),
                "sal_case": None,
                "sal_strategies": [{"title": name, "value": name} for name, _ in strategies],
                "sal_strategy_help": dict(strategies),
                "sal_strategy_cost": {},
                "sal_strategy": "fixed_interval",
                "sal_budget": 10,
                "sal_min_spacing": 0,
                "sal_rows": [],
                "sal_selected": [],
                "sal_view_slice": None,
                "sal_annotated": [],
                "sal_methods": [{"title": name, "value": name} for name, _ in methods],
                "sal_method_help": dict(methods),
                "sal_method": "sdf",
                "sal_most_confident": 0,
                "sal_auto_update": True,
                "sal_volume_rendering": False,
                "sal_has_preview": False,
                "sal_can_undo": False,
                "sal_message": "",
                "sal_message_type": "info",
                "sal_job": "",
                "sal_progress": 0,
                "sal_saved": [],
            }
        )

    def _paintOneSliceAtATime(self):
        """Paint and Erase start with a 2D brush, as in Slicer's Segment Editor: a stroke on an axial view changes that
        slice only (trame-slicer's app starts them with a sphere, which on a 10 mm-thick CT reaches the slices on
        either side). The sphere stays a click away in the effect's options."""
        from trame_server.utils.typed_state import TypedState
        from trame_slicer.app.ui import PaintEffectState

        TypedState(self.state, PaintEffectState).data.use_sphere_brush = False  # Paint's and Erase's state

    def report(self, text: str, kind: str = "info") -> None:
        self.state.sal_message, self.state.sal_message_type = text, kind

    def guarded(self, failure: str, action: Callable) -> Callable:
        """``action`` reporting any error in the page as "``failure``: <what the error says>"."""

        def run(*args, **kwargs):
            try:
                return action(*args, **kwargs)
            except Exception as error:  # every error reaches the page; the log keeps the traceback
                LOG.exception(failure)
                self.report(f"{failure}: {error}", "error")
            finally:
                self._refresh()
            return None

        return run

    def _refresh(self) -> None:
        session = self.session
        if session is None:
            return
        self.state.sal_rows = [{**row, "score": round(row["score"], 4)} for row in session.queriedSlices()]
        self.state.sal_annotated = session.annotatedSlices()
        self.state.sal_has_preview = session.hasPreview()
        self.state.sal_can_undo = session.canUndo()
        self._reportViewSlice()

    # -- views -------------------------------------------------------------------------------------------------------

    def _axialSliceNode(self):
        views = self.slicer.view_manager.get_slice_views()
        axial = next((view for view in views if view.get_orientation() == "Axial"), None)
        return self.slicer.scene.GetNodeByID(axial.get_view_node_id()) if axial is not None else None

    def _reportViewSlice(self, *_):
        sliceNode = self._axialSliceNode()
        if self.session is not None and sliceNode is not None:
            self.state.sal_view_slice = self.session.sliceShown(sliceNode)

    def _showVolumeRendering(self, visible: bool) -> None:
        """Volume rendering in the 3D view, off by default: without a GPU (Mesa's llvmpipe) each render of it takes
        long enough to make the first view and every scene change seconds slower (see README, In the browser)."""
        if self.session is not None:
            self.slicer.volume_rendering.get_vr_display_node(self.session.volumeNode).SetVisibility(bool(visible))

    def _fitViewsOnceSized(self):
        """Fit each view to the volume once the page has given it its size: the first case opens before any page
        connects, when a view is still 300 x 300, so the fit made then zooms the axial slice far in once the page
        makes the view tall and narrow. The page resizes a view several times while its layout settles, so the fit
        waits until no resize came for ``FIT_SETTLE_SECONDS``; later resizes keep what the person zoomed."""
        for view in self.slicer.view_manager.get_views():
            window = view.render_window()
            pending = {}

            def fit(view=view, window=window):
                window.RemoveObserver(self._fitObservations.pop(window))
                view.fit_view_to_content()
                view.schedule_render()

            def resized(*_, fit=fit, pending=pending):
                if "handle" in pending:
                    pending["handle"].cancel()
                pending["handle"] = asyncio.get_event_loop().call_later(FIT_SETTLE_SECONDS, fit)

            self._fitObservations[window] = window.AddObserver("WindowResizeEvent", resized)

    def _observeViewSlice(self):
        sliceNode = self._axialSliceNode()
        if sliceNode is not None and sliceNode is not self._observedSliceNode:

            def onMoved(*_):
                with self.state:
                    self._reportViewSlice()

            sliceNode.AddObserver("ModifiedEvent", onMoved)
            self._observedSliceNode = sliceNode

    # -- actions -----------------------------------------------------------------------------------------------------

    def openCase(self, name: str) -> None:
        """Open a case of the data folder (the scene is cleared first; one session per server)."""
        if name not in self.cases:
            inside(self.dataFolder, name)  # a path-like name is refused as such
            raise ValueError(f"No case named {name!r} here; choose one of: {', '.join(self.cases)}.")
        self.stopJob()
        if self._autoPreview is not None:
            self._autoPreview.cancel()
            self._autoPreview = None
        if self.session is not None:
            self.session.close()
        self.slicer.scene.Clear(False)
        self.session = AnnotationSession(self.slicer.scene, self.cases[name], self.output)
        self.session.observeEdits(self._onSegmentationEdited)
        self.slicer.display_manager.show_volume(self.session.volumeNode, do_reset_views=True)
        self._showVolumeRendering(self.state.sal_volume_rendering)
        for view in self.slicer.view_manager.get_slice_views():
            view.set_visible_in_3d(True)  # the 3D view shows where the three slices are
        self.viewer._load_files_logic.volume_loaded(self.session.volumeNode)  # trame-slicer's "volume loaded" signal
        self._observeViewSlice()
        self.state.sal_strategy_cost = self.session.rankingCosts()
        self.state.sal_case = name
        self.report(f"Opened {name}: rank the slices to annotate, or draw and propagate.")

    def _onSegmentationEdited(self) -> None:
        """After an edit that dropped the preview: preview again 0.5 s after the last of a burst of edits for a fast
        method (auto-update on), or say that Preview must be pressed again. The stroke itself is never held up."""
        if self.session is None or not self.session.previewWasDropped():
            return
        if self._autoPreview is not None:  # a later edit of the same burst: wait again
            self._autoPreview.cancel()
            self._autoPreview = None
        method = self.state.sal_method
        with self.state:
            if not self.state.sal_auto_update:
                self.report("The segmentation changed, so the preview was dropped; press Preview again.")
            elif not self.session.methodIsInteractive(method):
                self.report(f"The preview follows each edit for fast methods (sdf); press Preview to update {method}.")
            else:
                self._autoPreview = asyncio.get_event_loop().call_later(AUTO_PREVIEW_SECONDS, self._previewAgain)

    def _previewAgain(self) -> None:
        self._autoPreview = None
        with self.state:
            self.guarded("Preview failed", lambda: self.propagate(preview=True, after="after your edit"))()

    def rank(self):
        strategy, budget, spacing = self.state.sal_strategy, int(self.state.sal_budget), int(self.state.sal_min_spacing)
        modelPath = str(self.modelPath) if self.modelPath.is_file() else ""

        def show(_):
            rows = self.session.queriedSlices()
            self.session.jumpTo(rows[0]["slice"])
            self.report(f"{len(rows)} slices to annotate ({strategy}); the views show slice {rows[0]['slice']}.")

        job = self.session.rankingJob(strategy, budget, spacing, modelPath)
        if self.session.rankingTakesLong(strategy, modelPath):
            self.startJob("Ranking", lambda: job, show)
        else:
            show(job.runHere())

    def jump(self, sliceIndex):
        self.session.jumpTo(int(sliceIndex))

    def step(self, direction):
        target = self.session.nextQueriedSlice(self.state.sal_view_slice, int(direction))
        if target is None:
            self.report("Every queried slice is annotated: propagate, update the model, or rank again.")
            return
        self.session.jumpTo(target)

    def markAnnotated(self):
        index = self.state.sal_view_slice
        annotated = self.session.markAnnotated(index)
        self.report(f"Slice {index} is annotated. Annotated slices: {annotated}.", "success")

    def propagate(self, preview=False, after=""):
        outcome = self.session.propagate(
            self.state.sal_method, preview=preview, mostConfident=int(self.state.sal_most_confident or 0)
        )
        prefix = f"Preview{' updated ' + after if after else ''} (not written yet): " if preview else ""
        self.report(prefix + outcome.summary(), "success")

    def apply(self):
        self.report(self.session.applyPreview().summary(), "success")

    def undo(self):
        previewAgain = self.session.undo()
        again = " The propagation is previewed again: Apply writes it." if previewAgain else ""
        self.report("The segments are back as they were before the last propagation." + again)

    def download(self, name: str):
        """A file Save wrote (only those: the page lists them) as a websocket attachment, for ``utils.download``."""
        path = inside(self.output, name)  # a path-like name is refused as such
        if name not in self.state.sal_saved:
            raise ValueError(f"{name!r} is not a file this session saved; Save, then download what it lists.")
        return self.server.protocol.addAttachment(path.read_bytes())

    def save(self):
        saved = self.session.save()
        names = [path.name for path in saved.files()]
        self.state.sal_saved = names
        stored = f" The DICOM-SEG is stored on the PACS ({saved.stored_uid})." if saved.stored_uid else ""
        self.report(f"Saved {', '.join(names)} in {self.output}.{stored}", "success")

    # -- background work (model) -------------------------------------------------------------------------------------

    @property
    def modelPath(self) -> Path:
        return self.output / f"{self.session.case.name}-model.pt"

    def startJob(self, description: str, makeJob: Callable, onFinished: Callable) -> None:
        """Start a background job (the page stays responsive) and follow it until it ends."""
        if self.session.job is not None:
            raise RuntimeError(f"{self.state.sal_job} is running: wait for it, or cancel it.")
        self.output.mkdir(parents=True, exist_ok=True)
        self.session.job = makeJob().start()
        self.state.sal_job, self.state.sal_progress = description, 0
        asyncio.get_event_loop().create_task(self._followJob(onFinished))

    async def _followJob(self, onFinished: Callable) -> None:
        from SpatialALSlicerLib.BackgroundWork import CANCELLED, FINISHED, RUNNING

        job = self.session.job
        while job.poll() == RUNNING:
            done, total, _ = job.progress
            with self.state:
                self.state.sal_progress = round(100 * done / max(total, 1))
            await asyncio.sleep(JOB_POLL_SECONDS)
        with self.state:
            self.session.job, description = None, self.state.sal_job
            self.state.sal_job = ""
            if job.state == FINISHED:
                self.guarded(f"{description} failed", lambda: onFinished(job.finish()))()
            elif job.state == CANCELLED:
                self.report(f"{description}: cancelled.")
            else:
                self.report(f"{description} failed: {job.error}", "error")
            job.cleanup()

    def updateModel(self):
        path = self.modelPath
        strategy, budget, spacing = self.state.sal_strategy, int(self.state.sal_budget), int(self.state.sal_min_spacing)

        def finished(summary):
            rows = self.session.queriedSlices()
            self.session.jumpTo(rows[0]["slice"])
            loss = summary.history[-1]["train_loss"]
            self.report(
                f"Model updated: {path.name} (round {summary.round_index}, {summary.steps} steps, loss {loss:.3f}); "
                f"{len(rows)} slices to annotate ({strategy}), the views show slice {rows[0]['slice']}.",
                "success",
            )

        self.startJob(
            "Updating the model", lambda: self.session.updateModelJob(path, strategy, budget, spacing), finished
        )

    def predict(self):
        path = self.modelPath
        if not path.is_file():
            raise FileNotFoundError(f"No model yet ({path.name}): press Update model first.")
        self.startJob("Predicting", lambda: self.session.predictionJob(path), lambda _: self.report("Predicted."))

    def cancelJob(self):
        if self.session.job is not None:
            self.session.job.cancel(CANCEL_GRACE_SECONDS)
            self.report("Cancelling...")

    def stopJob(self):
        if self.session is not None and self.session.job is not None:
            self.session.job.stop()
            self.session.job = None

    # -- wiring ------------------------------------------------------------------------------------------------------

    def _bindControllers(self):
        actions = {
            "sal_open": ("Could not open the case", self.openCase),
            "sal_rank": ("Ranking failed", self.rank),
            "sal_jump": ("Could not show the slice", self.jump),
            "sal_step": ("Could not step", self.step),
            "sal_mark": ("Could not mark the slice annotated", self.markAnnotated),
            "sal_preview": ("Preview failed", lambda: self.propagate(preview=True)),
            "sal_propagate": ("Propagation failed", self.propagate),
            "sal_apply": ("Apply failed", self.apply),
            "sal_undo": ("Undo failed", self.undo),
            "sal_save": ("Saving failed", self.save),
            "sal_download": ("Download failed", self.download),
            "sal_update_model": ("Update model failed", self.updateModel),
            "sal_predict": ("Prediction failed", self.predict),
            "sal_cancel": ("Cancel failed", self.cancelJob),
        }
        for name, (failure, action) in actions.items():
            self.server.trigger(name)(self.guarded(failure, action))

    def _buildPanel(self):
        layout = self.viewerUI.layout
        layout.title.set_text("Spatial Active Learning")
        with layout:
            client.ClientTriggers(mounted=STEP_SHORTCUTS)
            with v.VNavigationDrawer(location="right", permanent=True, width=380, classes="pa-2"):
                self._casePicker()
                self._selectorCard()
                self._propagationCard()
                self._modelCard()
                self._messageArea()

    def _casePicker(self):
        switch("Volume rendering in 3D (slow without a GPU)", "volume_rendering", "volume-rendering")
        v.VSelect(
            label="Case",
            items=("sal_cases",),
            v_model=("sal_case",),
            density="compact",
            update_modelValue="trigger('sal_open', [$event])",
            raw_attrs=['data-testid="case"'],
            v_if="sal_cases.length > 1",
        )

    def _selectorCard(self):
        with v.VCard(title="Active Slice Selector", variant="flat", density="compact"), v.VCardText():
            v.VSelect(
                label="Strategy",
                items=("sal_strategies",),
                v_model=("sal_strategy",),
                density="compact",
                hint=("sal_strategy_help[sal_strategy] + ' ' + (sal_strategy_cost[sal_strategy] || '')",),
                persistent_hint=True,
                raw_attrs=['data-testid="strategy"'],
            )
            with html.Div(classes="d-flex ga-2 mt-2"):
                numberField("Budget", "budget", 1, "budget")
                numberField("Min spacing", "min_spacing", 0, "min-spacing")
            actionButton("Rank slices", "sal_rank", "rank", block=True, color="primary", size="default")
            with v.VTable(density="compact", height=200, fixed_header=True, raw_attrs=['data-testid="queried-slices"']):
                with html.Thead(), html.Tr():
                    for title in ("Rank", "Slice", "Score", "Status"):
                        html.Th(title)
                with (
                    html.Tbody(),
                    html.Tr(
                        v_for="row in sal_rows",
                        key="row.slice",
                        click="trigger('sal_jump', [row.slice])",
                        classes=("row.slice === sal_view_slice ? 'bg-primary' : ''",),
                        style="cursor: pointer;",
                        raw_attrs=[':data-slice="row.slice"', ':data-status="row.status"'],
                    ),
                ):
                    for key in ("rank", "slice", "score", "status"):
                        html.Td(f"{{{{ row.{key} }}}}")
            html.Div(
                "Axial view: slice {{ sal_view_slice }} · annotated: {{ sal_annotated.join(', ') || 'none' }}",
                classes="text-caption my-1",
                raw_attrs=['data-testid="view-slice"'],
            )
            with html.Div(classes="d-flex ga-2"):
                actionButton("Previous", "sal_step", "previous", argument=-1)
                actionButton("Next", "sal_step", "next", argument=1)
                actionButton("Mark annotated", "sal_mark", "mark-annotated", color="secondary")

    def _propagationCard(self):
        with v.VCard(title="Spatial Propagation", variant="flat", density="compact"), v.VCardText():
            namedChoice("Method", "method")
            numberField("Keep N most confident (0: all)", "most_confident", 0, "most-confident", classes="mt-2")
            switch("Update the preview after each edit (fast methods)", "auto_update", "auto-update")
            with html.Div(classes="d-flex flex-wrap ga-2"):
                actionButton("Preview", "sal_preview", "preview")
                actionButton("Apply", "sal_apply", "apply", disabled=("!sal_has_preview",))
                actionButton("Propagate", "sal_propagate", "propagate", color="primary")
                actionButton("Undo", "sal_undo", "undo", disabled=("!sal_can_undo",))

    def _modelCard(self):
        with v.VCard(title="Model", variant="flat", density="compact"), v.VCardText():
            with html.Div(classes="d-flex flex-wrap ga-2"):
                actionButton("Update model", "sal_update_model", "update-model", disabled=("!!sal_job",))
                actionButton("Predict", "sal_predict", "predict", disabled=("!!sal_job",))
                actionButton("Cancel", "sal_cancel", "cancel", v_if="sal_job", color="warning")
                actionButton("Save", "sal_save", "save", color="primary")
            v.VProgressLinear(
                v_if="sal_job",
                model_value=("sal_progress",),
                height=6,
                classes="mt-2",
                raw_attrs=['data-testid="progress"'],
            )
            html.Div("{{ sal_job }}", v_if="sal_job", classes="text-caption")
            with html.Div(v_if="sal_saved.length", classes="d-flex flex-wrap ga-1 mt-2"):
                v.VBtn(
                    "{{ name }}",
                    v_for="name in sal_saved",
                    key="name",
                    size="x-small",
                    variant="tonal",
                    prepend_icon="mdi-download",
                    click="utils.download(name, trigger('sal_download', [name]), 'application/octet-stream')",
                    raw_attrs=[':data-testid="`download-${name}`"'],
                )

    def _messageArea(self):
        v.VAlert(
            text=("sal_message",),
            type=("sal_message_type",),
            v_if="sal_message",
            density="compact",
            variant="tonal",
            classes="mt-2",
            raw_attrs=['data-testid="message"'],
        )
