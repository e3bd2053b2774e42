"""TrainingLauncher: pick a recipe, a student and a budget, run it in the background and watch it train.

The run goes to :func:`softlab.train.start_run` (a daemon thread); its events are drained on the kernel's thread
by a :class:`~widgets.base.Periodic` poll, fed to a :class:`softlab.train.ProgressTracker` and rendered: the
progress bar and its line at every poll, the curves at most every ``redraw_interval`` seconds. No widget is
touched from the training thread. Finished and stopped runs of the runs folder are listed (top-1, ECE, wall
time, read from their files) and any of them can be overlaid.

``launcher.config`` is the :class:`~softlab.train.TrainConfig` the controls and the linked widgets describe:
``TrainingLauncher(ws, calibration=explorer, augmentation=picker, teacher=teacher_picker)`` follows
``explorer.calibration`` (ferkd), ``picker.mixing`` and ``picker.crop_params`` (online crops) and
``teacher_picker.teacher_spec`` (online-teacher recipes); plain ``Calibration``, ``Mixing``, ``CropParams`` and
spec strings work too.
"""
from __future__ import annotations

import html
import time

import ipywidgets as W
import torch
from plotly.subplots import make_subplots

from softlab.calibrate import Calibration
from softlab.data.crops import CropParams
from softlab.train import (Mixing, ProgressTracker, TrainConfig, describe_recipe, get_recipe, list_recipes,
                           list_runs, list_students, load_history, next_run_name, read_run, run_histories, start_run)
from softlab.viz import accuracy_curves

from .base import ConfigSource, MessageLine, Periodic, error_text, figure_widget, labelled, sync_figure

CROP_KEYS = ("scale", "ratio", "flip_p", "interpolation")
OVERLAY_METRICS = ("test_top1", "train_loss", "test_ece", "train_top1")
# live curves: (trace name, subplot column, source) — per-step points from the tracker, per-epoch from the history
CURVES = (("train loss (steps)", 1, "curve_loss"), ("train loss", 1, "train_loss"),
          ("train top-1 (steps)", 2, "curve_accuracy"), ("train top-1", 2, "train_top1"),
          ("test top-1", 2, "test_top1"))
ENABLED = {"idle": {"start"}, "running": {"pause", "stop"}, "paused": {"resume", "stop"}, "stopping": set()}
BAR_STYLES = {"finished": "success", "stopped": "warning", "error": "danger"}


def available_devices() -> list[str]:
    """``["cuda", "cpu"]`` when CUDA is available, else ``["cpu"]``."""
    return ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]


# ----- what linked widgets (or plain objects) contribute
def calibration_of(source) -> Calibration | None:
    if source is None or isinstance(source, Calibration):
        return source
    return Calibration.from_dict(source) if isinstance(source, dict) else source.calibration


def mixing_of(source) -> Mixing | None:
    if source is None or isinstance(source, CropParams):
        return None
    if isinstance(source, Mixing):
        return source
    return Mixing.from_dict(source) if isinstance(source, dict) else getattr(source, "mixing", None)


def crop_params_of(source) -> CropParams | None:
    if source is None or isinstance(source, Mixing):
        return None
    if isinstance(source, CropParams):
        return source
    return CropParams.from_dict(source) if isinstance(source, dict) else getattr(source, "crop_params", None)


def teacher_spec_of(source) -> str | None:
    if source is None or isinstance(source, str):
        return source
    return getattr(source, "teacher_spec", None) or getattr(source, "spec", None)


def is_teacher_model(source) -> bool:
    return isinstance(source, torch.nn.Module)


class TrainingLauncher(ConfigSource, W.VBox):
    """Launch and follow training runs: ``TrainingLauncher(workspace)`` or ``(dataset=..., store=...,
    eval_data=...)``; ``config=`` gives every setting the controls do not (student kwargs, seed, optimiser…;
    its warmup is cut to the chosen number of epochs).

    ``start(resume=False)``, ``pause()``, ``resume()``, ``stop()`` drive the run (``start(resume=True)`` continues
    the last stopped run from its checkpoint); ``handle`` is its :class:`~softlab.train.RunHandle`, ``tracker``
    its :class:`~softlab.train.ProgressTracker`; ``poll()`` drains its events and redraws (the kernel does it
    every ``poll_interval`` s); ``wait(timeout)`` blocks until it ends. ``callbacks`` are extra event consumers,
    called on the training thread.
    """

    def __init__(self, workspace=None, *, calibration=None, augmentation=None, teacher=None, mixing=None,
                 crop_params=None, dataset=None, store=None, eval_data=None, reference=None,
                 config: TrainConfig | None = None, runs=None, callbacks=(), poll_interval: float = 0.25,
                 redraw_interval: float = 0.5):
        self.workspace = workspace
        self.dataset = dataset if dataset is not None else getattr(workspace, "dataset", None)
        self.store = store if store is not None else getattr(workspace, "store", None)
        self.eval_data = eval_data if eval_data is not None else getattr(workspace, "test", None)
        self.reference, self.callbacks = reference, tuple(callbacks)
        self.base_config = (config or TrainConfig()).replace(progress=False)
        self.runs_folder = str(runs if runs is not None else getattr(workspace, "runs", None) or self.base_config.out)
        self.sources = {"calibration": calibration, "augmentation": augmentation, "teacher": teacher,
                        "mixing": mixing, "crop_params": crop_params}
        self.handle, self.tracker, self.last_config = None, ProgressTracker(), None
        self.state, self.runs, self.redraws = "idle", [], 0
        self.redraw_interval, self._last_redraw, self._ended = redraw_interval, None, True
        self._poller = Periodic(self.poll, poll_interval)
        self._build_controls()
        self._build_views()
        self._connect()
        super().__init__(children=self._layout(), layout=W.Layout(width="100%"))
        self._settings_changed()
        self.refresh_runs()
        self._show_state()

    # ----- building
    def _build_controls(self) -> None:
        base = self.base_config
        students = list_students() + ([base.student] if base.student not in list_students() else [])
        devices = available_devices()
        self.recipe = W.Dropdown(options=list_recipes(), value=base.recipe, **labelled("recipe", "60px"))
        self.student = W.Dropdown(options=students, value=base.student, **labelled("student", "60px"))
        self.device = W.Dropdown(options=devices, value=base.device if base.device in devices else devices[0],
                                 **labelled("device", "60px"))
        self.epochs = W.BoundedIntText(value=base.epochs, min=1, max=100_000, **labelled("epochs", "60px"),
                                       layout=W.Layout(width="170px"))
        self.batch_images = W.BoundedIntText(value=base.batch_images, min=1, max=1_000_000,
                                             **labelled("images / step", "90px"),
                                             layout=W.Layout(width="200px"))
        self.num_crops = W.BoundedIntText(value=base.num_crops, min=1, max=1024, **labelled("crops / image", "90px"),
                                          layout=W.Layout(width="200px"))
        self.lr = W.FloatText(value=base.lr, **labelled("lr", "30px"), layout=W.Layout(width="160px"))
        self.name = W.Text(value=base.name or "", placeholder="automatic", **labelled("run name", "70px"))
        self.recipe_doc, self.settings = W.HTML(), W.HTML()
        self.buttons = {key: W.Button(description=label, icon=icon, tooltip=tip) for key, label, icon, tip in (
            ("start", "Start", "play", "start a run with these settings, in the background"),
            ("pause", "Pause", "pause", "pause between two steps"),
            ("resume", "Resume", "play", "resume the paused run"),
            ("stop", "Stop", "stop", "stop after the current step, with a checkpoint to continue from"),
            ("continue", "Continue", "forward", "continue the stopped run from its checkpoint"))}
        self.buttons["start"].button_style = "success"

    def _build_views(self) -> None:
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="40%"))
        self.progress_text = W.HTML()
        self.message = MessageLine()
        self.curves = figure_widget(self._curves_figure())
        self.runs_table = W.HTML()
        self.overlay_select = W.SelectMultiple(options=[], rows=5, **labelled("runs", "40px"))
        self.overlay_button = W.Button(description="Overlay", icon="line-chart",
                                       tooltip="draw the chosen runs' curves together (all runs when none is chosen)")
        self.refresh_button = W.Button(description="Refresh", icon="refresh", tooltip="re-read the runs folder")
        self.overlay_figure = figure_widget()
        self.overlay_box = W.Box([self.overlay_figure], layout=W.Layout(display="none"))  # shown by overlay()

    def _curves_figure(self):
        figure = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
        for name, column, source in CURVES:
            steps = source.startswith("curve_")
            figure.add_scatter(x=[], y=[], name=name, mode="lines" if steps else "lines+markers",
                               line=dict(width=1) if steps else None, opacity=0.5 if steps else 1.0,
                               row=1, col=column)
        figure.update_xaxes(title_text="epoch")
        figure.update_layout(height=330, margin=dict(t=40, b=40, l=50, r=20), legend=dict(orientation="h", y=-0.25))
        return figure

    def _connect(self) -> None:
        for control in (self.recipe, self.student, self.device, self.epochs, self.batch_images, self.num_crops,
                        self.lr, self.name):
            control.observe(self._settings_changed, "value")
        for source in self.sources.values():
            if hasattr(source, "on_config_change"):
                source.on_config_change(self._settings_changed)
        actions = {"start": self.start, "pause": self.pause, "resume": self.resume, "stop": self.stop,
                   "continue": lambda: self.start(resume=True)}
        for key, action in actions.items():
            self.buttons[key].on_click(lambda _button, action=action: action())
        self.overlay_button.on_click(lambda _button: self.overlay())
        self.refresh_button.on_click(lambda _button: self.refresh_runs())

    def _layout(self) -> list:
        def row(children):
            return W.HBox(children, layout=W.Layout(flex_flow="row wrap"))
        return [row([self.recipe, self.student, self.device]), self.recipe_doc,
                row([self.epochs, self.batch_images, self.num_crops, self.lr]), row([self.name]), self.settings,
                row(list(self.buttons.values())), row([self.progress, self.progress_text]), self.message,
                self.curves, W.HTML("<b>Runs</b>"), self.runs_table,
                row([self.overlay_select, W.VBox([self.overlay_button, self.refresh_button])]), self.overlay_box]

    # ----- the config
    @property
    def config(self) -> TrainConfig:
        """The TrainConfig of the controls and linked widgets (raises ValueError on an invalid setting)."""
        base, recipe = self.base_config, get_recipe(self.recipe.value)
        student = self.student.value
        return base.replace(
            recipe=recipe.name, name=self.name.value.strip() or next_run_name(self.runs_folder, recipe.name),
            out=self.runs_folder, student=student,
            student_kwargs=dict(base.student_kwargs) if student == base.student else {},
            epochs=int(self.epochs.value), warmup_epochs=min(base.warmup_epochs, int(self.epochs.value)),
            batch_images=int(self.batch_images.value),
            num_crops=int(self.num_crops.value), lr=float(self.lr.value), device=self.device.value,
            store=self._store_path() if recipe.crops == "stored" else None,
            calibration=self._calibration().to_dict() if recipe.name == "ferkd" else None,
            teacher=self._teacher_spec() if recipe.needs_teacher else None,
            mixing=self._mixing(), crop=self._crop() if recipe.crops == "online" else None, **self._data_fields())

    def _calibration(self) -> Calibration:
        linked = calibration_of(self.sources["calibration"])
        if linked is not None:
            return linked
        base = self.base_config.calibration
        return Calibration.from_dict(base) if base else Calibration()

    def _mixing(self) -> dict | None:
        for key in ("mixing", "augmentation"):
            linked = mixing_of(self.sources[key])
            if linked is not None:
                return linked.to_dict()
        return self.base_config.mixing

    def _crop(self) -> dict | None:
        for key in ("crop_params", "augmentation"):
            linked = crop_params_of(self.sources[key])
            if linked is not None:
                return {k: v for k, v in linked.to_dict().items() if k in CROP_KEYS}
        if self.base_config.crop is None and self.store is not None:  # the store's regions' distribution
            return {k: v for k, v in self.store.manifest["crops"].items() if k in CROP_KEYS}
        return self.base_config.crop

    def _store_path(self) -> str | None:
        if self.store is None:
            return self.base_config.store
        return str(getattr(getattr(self.store, "store", self.store), "path"))

    def _teacher_spec(self) -> str | None:
        for source in (self.sources["teacher"], getattr(self.workspace, "teacher", None)):
            spec = teacher_spec_of(source)
            if spec:
                return spec
        return self.base_config.teacher

    def _teacher_object(self, spec: str | None):
        """A loaded teacher with this spec (given, the picker's, the workspace's), else None (built from spec)."""
        source, candidates = self.sources["teacher"], []
        if is_teacher_model(source):
            candidates.append(source)
        elif hasattr(source, "teacher_spec") and teacher_spec_of(source) == spec:
            candidates.append(getattr(source, "teacher", None))
        candidates.append(getattr(self.workspace, "teacher", None))
        return next((t for t in candidates if t is not None and getattr(t, "spec", None) == spec), None)

    def _data_fields(self) -> dict:
        base, ws, fields = self.base_config, self.workspace, {}
        if self.dataset is not None:
            fields["data"] = getattr(ws, "data_spec", None) or self.dataset.name
            fields["data_limit"] = getattr(ws, "data_limit", None)
        if self.eval_data is not None:
            fields["eval_data"] = getattr(ws, "test_spec", None) or self.eval_data.name
            fields["eval_limit"] = getattr(ws, "test_limit", None)
        if base.input_size is None and self.store is not None:
            fields["input_size"] = int(self.store.manifest["crops"]["teacher_input_size"][1])
        return fields

    def _run_objects(self, config: TrainConfig) -> dict:
        recipe = get_recipe(config.recipe)
        return {"dataset": self.dataset, "store": self.store if recipe.crops == "stored" else None,
                "teacher": self._teacher_object(config.teacher) if recipe.needs_teacher else None,
                "eval_data": self.eval_data, "reference": self.reference}

    def _settings_changed(self, *_ignored) -> None:
        self.recipe_doc.value = recipe_html(self.recipe.value, self._store_path(), self._teacher_spec())
        try:
            self.settings.value = settings_html(self.config)
        except (ValueError, TypeError) as error:
            self.settings.value = f"<i>invalid setting: {html.escape(error_text(error))}</i>"
        self._config_changed()

    # ----- running
    def start(self, resume: bool = False):
        """Start a run with :attr:`config` (``resume=True``: continue the last stopped run) → its RunHandle, or
        None when the settings are invalid (the message says why)."""
        if self.state != "idle":
            self.message.show("a run is in progress: stop it first", "warning")
            return None
        try:
            config = self.last_config if resume and self.last_config is not None else self.config
            objects = self._run_objects(config)
        except (ValueError, TypeError, KeyError) as error:
            self.message.show(error_text(error), "error")
            return None
        self.tracker, self.last_config, self._ended = ProgressTracker(), config, False
        self.notes: list[str] = []
        self._last_redraw = None
        self.handle = start_run(config, callbacks=self.callbacks, resume=resume, **objects)
        self.message.show(f"{'continuing' if resume else 'running'} {config.run_name} "
                          f"({config.recipe}, {config.epochs} epochs on {config.device}) → "
                          f"{self.runs_folder}/{config.run_name}", "info")
        self._set_state("running")
        self._draw_curves()
        self._poller.start()
        return self.handle

    def pause(self) -> None:
        if self.state == "running":
            self.handle.control.pause()
            self.tracker.pause(time.time())
            self._set_state("paused")

    def resume(self) -> None:
        if self.state == "paused":
            self.handle.control.resume()
            self.tracker.resume(time.time())
            self._set_state("running")

    def stop(self) -> None:
        """Stop after the current step; the run writes a checkpoint that ``start(resume=True)`` continues."""
        if self.state in ("running", "paused"):
            self.handle.control.request_stop()
            self.tracker.resume(time.time())
            self._set_state("stopping")
            self.message.show("stopping after the current step (a checkpoint is written)…", "info")

    def poll(self) -> bool:
        """Drain the run's events, update the progress line (and the curves when due); False once it ended."""
        if self.handle is None or self._ended:
            return False
        done = self.handle.done            # read first: once the thread is over, every event is in the queue
        for event in self.handle.events.drain():
            self.tracker(event)
            self._on_event(event)
        self._show_progress()
        if done:
            self._end()
            return False
        if self._last_redraw is None or time.monotonic() - self._last_redraw >= self.redraw_interval:
            self._draw_curves()
        return True

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> str:
        """Poll until the run ends (or ``timeout`` seconds pass) → the tracker's status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() >= deadline:
                break
            self.handle.thread.join(interval)
        return self.tracker.status

    def _on_event(self, event) -> None:
        if event.kind == "start" and event.start_step:
            done = event.start_step // event.steps_per_epoch
            self.tracker.seed_history([m for m in load_history(event.run_dir) if m["epoch"] <= done])
        elif event.kind == "note":  # e.g. images a FerKD calibration leaves without a kept crop
            self.notes.append(event.text)
            self.message.show(f"note: {event.text}", "warning")
        elif event.kind == "end":
            text = end_text(event, read_run(self.tracker.run_dir))
            self.message.show(" · ".join([text, *(f"note: {note}" for note in self.notes)]),
                              "warning" if event.status != "finished" or self.notes else "ok")
        elif event.kind == "error":
            self.message.show(event.error, "error")

    def _end(self) -> None:
        self._ended = True
        if self.tracker.active:  # the thread ended without an end or error event
            try:
                self.handle.result(0)
                self.message.show("the run ended without reporting its end", "warning")
            except BaseException as error:
                self.message.show(error_text(error), "error")
        self._poller.stop()
        self._set_state("idle")
        self._draw_curves()
        self.refresh_runs()
        self._settings_changed()  # the next automatic run name

    # ----- rendering
    def _set_state(self, state: str) -> None:
        self.state = state
        self._show_state()

    def _show_state(self) -> None:
        for key, button in self.buttons.items():
            button.disabled = key not in ENABLED[self.state]
        self.buttons["continue"].disabled = not (self.state == "idle" and self.tracker.status == "stopped")
        self._show_progress()

    def _show_progress(self) -> None:
        tracker = self.tracker
        self.progress.max = max(tracker.total_steps, 1)
        self.progress.value = min(tracker.step, self.progress.max)
        self.progress.bar_style = BAR_STYLES.get(tracker.status, "info" if tracker.active else "")
        self.progress_text.value = html.escape(tracker.describe()) if self.handle is not None else ""

    def _draw_curves(self) -> None:
        tracker, history = self.tracker, self.tracker.history
        with self.curves.batch_update():
            for trace, (_name, _column, source) in zip(self.curves.data, CURVES):
                if source.startswith("curve_"):
                    trace.x, trace.y = tracker.step_curve(getattr(tracker, source))
                else:
                    points = [(m["epoch"], m[source]) for m in history if source in m]
                    trace.x, trace.y = [p[0] for p in points], [p[1] for p in points]
        self._last_redraw = time.monotonic()
        self.redraws += 1

    def refresh_runs(self) -> None:
        """Re-read the runs folder into the table and the overlay choices."""
        self.runs = list_runs(self.runs_folder)
        active = self.tracker.run if self.state != "idle" else None
        self.runs_table.value = runs_table_html(self.runs, active)
        chosen = [name for name in self.overlay_select.value if name in {r.name for r in self.runs}]
        self.overlay_select.options = [run.name for run in self.runs]
        self.overlay_select.value = tuple(chosen)

    def overlay(self, names=None) -> None:
        """Draw the named runs' curves together (default: the chosen ones, else every run)."""
        self.refresh_runs()
        known = {run.name: run for run in self.runs}
        names = list(names if names is not None else self.overlay_select.value) or list(known)
        missing = [name for name in names if name not in known]
        if missing:
            self.message.show(f"no run named {', '.join(missing)} in {self.runs_folder}", "warning")
            return
        histories = run_histories([known[name] for name in names])
        metrics = [m for m in OVERLAY_METRICS if any(m in record for h in histories.values() for record in h)]
        sync_figure(self.overlay_figure, accuracy_curves(histories, metrics=metrics or None, title="Runs compared"))
        self.overlay_box.layout.display = None
        self.overlay_select.value = tuple(names)


# ----- text and tables
def recipe_html(name: str, store_path: str | None, teacher_spec: str | None) -> str:
    """The recipe's docstring (its formula and paper) and what it needs."""
    info = describe_recipe(name)
    title, *body = [" ".join(paragraph.split()) for paragraph in info["doc"].split("\n\n")] or [name]
    needs = []
    if info["needs_store"]:
        needs.append(f"trains on stored region labels: {html.escape(store_path or 'no label store given')}")
    if info["needs_teacher"]:
        needs.append(f"runs the teacher at every step: {html.escape(teacher_spec or 'no teacher given')}")
    needs_line = f'<div style="color:#555">{" · ".join(needs)}</div>' if needs else ""
    formula = "".join(f'<div style="margin-top:2px">{html.escape(paragraph)}</div>' for paragraph in body)
    return (f'<div class="softlab-recipe" style="margin:4px 0"><b>{html.escape(title)}</b>{formula}'
            f"{needs_line}</div>")


def settings_html(config: TrainConfig) -> str:
    """What the linked settings contribute to this config."""
    parts = []
    if config.calibration:
        c = config.calibration
        parts.append(f"calibration ({c['mode']}): T_L {c['t_low']:g} · T_M {c['t_mid']:g} · T_T {c['t_top']:g} · "
                     f"ε {c['epsilon']:g}")
    if config.mixing:
        m = config.mixing
        parts.append(f"mixing: {m['mode']}" + ("" if m["mode"] == "none" else
                                               f" (mixup α {m['mixup_alpha']:g}, cutmix α {m['cutmix_alpha']:g}, "
                                               f"p {m['prob']:g})"))
    else:
        parts.append("mixing: the recipe's default")
    if config.crop:
        low, high = config.crop["scale"]
        parts.append(f"crops: scale {low:g}–{high:g}, flip p {config.crop['flip_p']:g}")
    elif get_recipe(config.recipe).crops == "stored":
        parts.append("crops: the store's regions")
    if config.teacher:
        parts.append(f"teacher: {config.teacher}")
    parts.append(f"run: {config.out}/{config.run_name}")
    return f'<div style="color:#333">{html.escape(" · ".join(parts))}</div>'


def end_text(event, summary) -> str:
    if event.status == "stopped":
        return (f"{event.run} stopped at step {event.step}; checkpoint {event.checkpoint} — Continue resumes it")
    if summary is not None and summary.top1 is not None:
        return (f"{event.run} finished: test top-1 {summary.top1:.4f}, ECE {summary.ece:.4f}, "
                f"{event.seconds:.1f} s")
    return f"{event.run} finished in {event.seconds:.1f} s"


def _cell(value, spec: str) -> str:
    return "–" if value is None else f"{value:{spec}}"


def runs_table_html(runs, active: str | None = None) -> str:
    """An HTML table of run summaries: run, recipe, student, status, epochs, top-1, ECE, wall time."""
    if not runs:
        return "<i>no runs yet</i>"
    header = ("run", "recipe", "student", "status", "epochs", "test top-1", "ECE", "wall s")
    rows = [(run.name, run.recipe, run.student, "running" if run.name == active else run.status,
             f"{run.epochs_done}/{run.epochs}", _cell(run.top1, ".4f"), _cell(run.ece, ".4f"),
             _cell(run.wall_seconds, ".1f")) for run in runs]
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return (f'<table class="softlab-runs" style="border-collapse:collapse" border="1" cellpadding="4">'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
