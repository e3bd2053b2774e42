"""TeacherPicker: the teacher registry in a dropdown, and a quick look at the chosen teacher.

Registered teachers (bundled EfficientNet-Lite, the in-project Fashion-MNIST teacher, any others) and the spec
forms (``timm:<name>``, ``torchvision:<name>``, ``file:<path>@<arch>``, an ensemble picked from a list, any spec).
A loaded teacher is probed: top-1 on a small held-out subset and its top-3 on a few images. A teacher that cannot
load says why in the widget. ``picker.teacher_spec`` is the spec shown (what a linked TrainingLauncher uses) and
``picker.teacher`` the loaded :class:`~softlab.teachers.Teacher` for it, or None.
"""
from __future__ import annotations

import html
import time
from contextlib import contextmanager
from dataclasses import dataclass

import ipywidgets as W
import plotly.graph_objects as go

from softlab.data import load_dataset
from softlab.teachers import TeacherSpecError, create_teacher, list_teachers
from softlab.teachers.probe import ANY_SPEC, choice_for_spec, probe_dataset, probe_teacher, teacher_choices
from softlab.viz.teachers import teacher_predictions_figure

from .base import ConfigSource, MessageLine, Spinner, error_text, figure_widget, labelled, sync_figure


@dataclass(frozen=True)
class Loaded:
    """A teacher this picker loaded, its probe (or None and a ``note`` saying why) and its load time."""

    teacher: object
    probe: object
    note: str | None
    seconds: float | None


class TeacherPicker(ConfigSource, W.VBox):
    """Pick a teacher, load it and see how it does: ``TeacherPicker(spec="efficientnet_lite0")``.

    ``dataset`` (a data set or its spec) holds the held-out images it is probed on; for a teacher of other
    classes, or by default, the teacher's own (Fashion-MNIST's test set, or the labelled ImageNet photos): the
    first ``limit`` labelled images, with top-3 bars for ``show`` of them. ``spec`` or a built ``teacher`` sets
    the first choice. With ``auto_load`` a registered teacher that is ready (installed, cached) loads as soon as
    it is chosen; hub names, files, ensembles and a teacher that would first have to train wait for the Load
    button. ``load()`` does what the button does and returns the teacher (None when it failed; ``message`` then
    says why).

    ``teacher_spec`` is the spec the controls show, None while it is incomplete (no name typed, fewer than two
    ensemble members); ``teacher`` and ``probe`` are the loaded teacher for it and its
    :class:`~softlab.teachers.TeacherProbe`, or None. Linked widgets follow through ``on_config_change``.
    """

    def __init__(self, dataset=None, spec: str | None = None, teacher=None, limit: int = 64, show: int = 4,
                 auto_load: bool = True):
        self.dataset = load_dataset(dataset) if dataset is not None else None
        self.limit, self.show, self.auto_load = limit, show, auto_load
        self.teacher_spec: str | None = None
        self.teacher = None
        self.probe = None
        self.load_seconds: float | None = None
        self._loaded: dict[str, Loaded] = {}  # by spec, so that choosing a teacher again is instant
        self._quiet = False
        self._choices = {choice.key: choice for choice in teacher_choices()}
        self._build_controls()
        super().__init__(children=[
            W.HBox([self.choice, self.load_button, self.spinner]), self.text, self.members, self.message,
            self.summary, self.output, self.figure])
        if teacher is not None:
            self._remember(teacher.spec, teacher, None)
        self.choose(teacher.spec if teacher is not None else spec or next(iter(self._choices)))

    def _build_controls(self) -> None:
        self.choice = W.Dropdown(options=[(c.label, c.key) for c in self._choices.values()],
                                 **labelled("teacher", "60px"), layout=W.Layout(width="560px"))
        self.text = W.Text(continuous_update=False, **labelled("name", "60px"), layout=W.Layout(width="560px"))
        self.members = W.SelectMultiple(options=list_teachers(), rows=min(6, max(2, len(list_teachers()))),
                                        **labelled("members", "60px"), layout=W.Layout(width="560px"))
        self.load_button = W.Button(description="Load", icon="download", button_style="primary",
                                    tooltip="load the teacher and probe it on held-out images")
        self.spinner, self.message = Spinner(), MessageLine()
        self.summary = W.HTML()
        self.output = W.Output()  # prints and progress bars of a long load (the first training of a teacher)
        self.figure = figure_widget()
        self.choice.observe(self._on_choice, "value")
        self.text.observe(self._on_input, "value")
        self.members.observe(self._on_input, "value")
        self.load_button.on_click(lambda _button: self.load())

    @property
    def current_choice(self):
        return self._choices[self.choice.value]

    def choose(self, spec: str) -> None:
        """Show ``spec`` in the controls (a registered name, a form with its text or members, or any spec)."""
        key, text, members = choice_for_spec(spec)
        with self._quietly():
            self.choice.value = key
            self.text.value = text
            self.members.value = tuple(m for m in members if m in self.members.options)
        self._refresh(chosen=True)

    @contextmanager
    def _quietly(self):
        """Set several controls without each one triggering a refresh."""
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    def _on_choice(self, _change) -> None:
        if not self._quiet:
            with self._quietly():
                self.text.value, self.members.value = "", ()
            self._refresh(chosen=True)

    def _on_input(self, _change) -> None:
        if not self._quiet:
            self._refresh(chosen=False)

    def _refresh(self, chosen: bool) -> None:
        """Follow the controls: the spec, what is shown, and (for a ready registered teacher) loading it."""
        choice = self.current_choice
        self.text.layout.display = "" if choice.needs_text else "none"
        self.members.layout.display = "" if choice.needs_members else "none"
        self.text.placeholder = choice.example
        self.text.description = "path" if choice.key == "file:" else "spec" if choice.key == ANY_SPEC else "name"
        try:
            spec, hint = choice.spec(self.text.value, self.members.value), ""
        except TeacherSpecError as error:
            spec, hint = None, str(error)
        changed = spec != self.teacher_spec
        self.teacher_spec = spec
        waits = choice.needs_text or choice.needs_members or not choice.ready or not self.auto_load
        if spec in self._loaded:
            self._show(self._loaded[spec])
        elif changed or chosen:
            self._show_unloaded(*self._waiting_message(choice, spec, hint))
        if changed:
            self._config_changed()
        if spec is not None and spec not in self._loaded and not waits:
            self.load()

    @staticmethod
    def _waiting_message(choice, spec: str | None, hint: str) -> tuple[str, str]:
        """What to say about a choice that is not loaded: (text, kind)."""
        if spec is None:
            how = "; select them in the list (Ctrl or Shift picks several)" if choice.needs_members else ""
            return hint + how, "info"
        if not choice.ready and not (choice.needs_text or choice.needs_members):
            return choice.note, "warning"
        return f"press Load to load {spec} ({choice.note})", "info"

    def load(self):
        """Load the spec shown, probe it, and show the result (or why it failed); returns the teacher or None."""
        spec, choice = self.teacher_spec, self.current_choice
        if spec is None:
            self.message.show(f"nothing to load yet: {choice.note}", "warning")
            return None
        if self.output.outputs:  # outside a kernel clear_output would print terminal escapes
            self.output.clear_output()
        started = time.perf_counter()
        slow = not choice.ready and not (choice.needs_text or choice.needs_members)
        teacher = failure = None
        with self._busy(f"{choice.note}…" if slow else f"loading {spec}…"), self.output:
            try:  # inside the Output: in a kernel it would swallow the exception and show its traceback
                teacher = create_teacher(spec)
            except Exception as error:  # any failure is the user's message, never a traceback
                failure = error
        if failure is not None:
            self._show_failure(spec, failure)
            return None
        self._remember(spec, teacher, time.perf_counter() - started)
        self._choices = {c.key: c for c in teacher_choices()}  # a teacher trained by loading is cached now
        if spec == self.teacher_spec:
            self._show(self._loaded[spec])
        self._config_changed()
        return teacher

    def _remember(self, spec: str, teacher, seconds: float | None) -> None:
        probe, note = self._probe(teacher)
        self._loaded[spec] = Loaded(teacher, probe, note, seconds)

    def _probe(self, teacher) -> tuple:
        """``(probe, None)``, or ``(None, why not)`` when there are no fitting held-out images."""
        with self._busy(f"probing {teacher.spec} on held-out images…"):
            try:
                data = self.dataset
                if data is None or (data.classes and len(data.classes) != teacher.num_classes):
                    data = probe_dataset(teacher)  # e.g. an ImageNet teacher picked in a Fashion-MNIST lab
                if data is None:
                    return None, (f"no held-out images for its {teacher.num_classes} classes to probe it on; "
                                  "pass them as TeacherPicker(dataset=...)")
                return probe_teacher(teacher, data, limit=self.limit, show=self.show), None
            except Exception as error:
                return None, f"could not probe it: {error_text(error)}"

    @contextmanager
    def _busy(self, text: str):
        self.load_button.disabled = True
        self.spinner.start(text)
        try:
            yield
        finally:
            self.spinner.stop()
            self.load_button.disabled = False

    def _show(self, loaded: Loaded) -> None:
        self.teacher, self.probe, self.load_seconds = loaded.teacher, loaded.probe, loaded.seconds
        took = f" in {loaded.seconds:.1f} s" if loaded.seconds is not None else ""
        if loaded.note:
            self.message.show(f"loaded {loaded.teacher.spec}{took}, but {loaded.note}", "warning")
        else:
            self.message.show(f"loaded {loaded.teacher.spec}{took}", "ok")
        self.summary.value = f"<b>{html.escape(loaded.probe.summary())}</b>" if loaded.probe is not None else ""
        figure = teacher_predictions_figure(loaded.probe) if loaded.probe is not None else go.Figure()
        sync_figure(self.figure, figure)

    def _clear(self) -> None:
        self.teacher = self.probe = self.load_seconds = None
        self.summary.value = ""
        sync_figure(self.figure, go.Figure())

    def _show_unloaded(self, text: str, kind: str) -> None:
        self._clear()
        self.message.show(text, kind)

    def _show_failure(self, spec: str, error: BaseException) -> None:
        self._clear()
        self.message.show(f"{spec} could not be loaded: {error_text(error)}", "error")
