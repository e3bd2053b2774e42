"""Plumbing shared by the widgets: work scheduled on the kernel's event loop, messages, busy indicators and
in-place figure updates. Nothing here computes anything a script would want; that lives in ``softlab``.

Why the event loop: traits must be set from the kernel thread. In a running kernel, comm handlers and cells run
on its asyncio loop, so :class:`Debouncer` and :class:`Periodic` schedule their callbacks there with
``loop.call_later``. Without a running loop (plain Python, unit tests) a debounced call runs at once and a
periodic one runs when :meth:`Periodic.tick` is called.
"""
from __future__ import annotations

import asyncio
import html

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

DEBOUNCE_S = 0.08


def kernel_loop():
    """The running asyncio loop of the kernel, or None outside one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Debouncer:
    """Calls ``fn()`` once, ``delay`` seconds after the last of a burst of triggers (a dragged slider sends many)."""

    def __init__(self, fn, delay: float = DEBOUNCE_S):
        self.fn, self.delay = fn, delay
        self._handle = None

    def __call__(self, *_ignored) -> None:
        loop = kernel_loop()
        if loop is None or self.delay <= 0:
            self.fn()
            return
        self.cancel()
        self._handle = loop.call_later(self.delay, self._fire)

    @property
    def pending(self) -> bool:
        return self._handle is not None

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def flush(self) -> None:
        """Run a pending call now."""
        if self._handle is not None:
            self.cancel()
            self.fn()

    def _fire(self) -> None:
        self._handle = None
        self.fn()


class Periodic:
    """Calls ``fn()`` every ``interval`` seconds on the kernel's loop while started; ``fn`` returning False stops
    it. :meth:`tick` runs it once by hand (what tests and code without a loop use)."""

    def __init__(self, fn, interval: float = 0.25):
        self.fn, self.interval = fn, interval
        self._handle = None

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        loop = kernel_loop()
        if loop is not None and self._handle is None:
            self._handle = loop.call_later(self.interval, self._fire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def tick(self):
        return self.fn()

    def _fire(self) -> None:
        self._handle = None
        if self.fn() is not False:
            self.start()


MESSAGE_COLORS = {"info": ("#0b5394", "#e8f0fe"), "ok": ("#1e6b2f", "#e6f4ea"), "warning": ("#7a4f01", "#fef7e0"),
                  "error": ("#a50e0e", "#fce8e6")}


def message_html(text: str, kind: str = "info") -> str:
    """A short coloured message box (escaped text; newlines kept)."""
    color, background = MESSAGE_COLORS[kind]
    body = html.escape(str(text)).replace("\n", "<br>")
    return (f'<div class="softlab-message softlab-{kind}" style="color:{color};background:{background};'
            f'padding:6px 10px;border-radius:4px;margin:4px 0;line-height:1.4">{body}</div>')


class MessageLine(W.HTML):
    """Where a widget says what happened: ``show(text, kind)`` with kind info | ok | warning | error."""

    def __init__(self, **kwargs):
        super().__init__(value="", **kwargs)
        self.text, self.kind = "", None

    def show(self, text: str, kind: str = "info") -> None:
        self.text, self.kind = str(text), kind
        self.value = message_html(text, kind)

    def clear(self) -> None:
        self.text, self.kind = "", None
        self.value = ""


def error_text(error: BaseException) -> str:
    """One readable line for an exception (its type when the message alone would be unclear)."""
    message = str(error).strip() or type(error).__name__
    return message if isinstance(error, (ValueError, RuntimeError, FileNotFoundError, KeyError)) \
        else f"{type(error).__name__}: {message}"


class Spinner(W.HTML):
    """A busy indicator with a label: ``start("computing…")`` / ``stop()`` (font-awesome's spinner)."""

    def __init__(self, **kwargs):
        super().__init__(value="", **kwargs)
        self.busy = False

    def start(self, text: str = "working…") -> None:
        self.busy = True
        self.value = (f'<span class="softlab-spinner"><i class="fa fa-spinner fa-spin"></i> '
                      f'{html.escape(text)}</span>')

    def stop(self) -> None:
        self.busy = False
        self.value = ""


def figure_widget(figure: go.Figure | None = None, width: int | None = None) -> go.FigureWidget:
    """A plotly FigureWidget showing ``figure``; ``width`` (pixels) fixes its width for good (:func:`sync_figure`
    keeps it). Figures side by side need one: without a width in its layout, plotly.js draws a widget 700 px
    wide whatever the box it sits in (it sizes itself before the box is laid out), so half-width figures were
    cut off on the right, legends included."""
    widget = go.FigureWidget(go.Figure() if figure is None else
                             dict(data=[json_safe(trace.to_plotly_json()) for trace in figure.data],
                                  layout=figure.layout))
    widget._fixed_width = width
    if width:
        widget.layout.width = width
    return widget


def side_by_side(*figures) -> W.HBox:
    """Figures (of fixed widths) in a row that wraps onto the next line where the notebook is too narrow."""
    return W.HBox(list(figures), layout=W.Layout(flex_flow="row wrap", width="100%"))


def json_safe(value):
    """A trace's properties with every multi-dimensional float array holding NaN/inf turned into nested lists
    with None: plotly's widget sends such arrays (a heatmap's ``z``) as JSON lists, where NaN is not valid JSON
    (the kernel then warns "Out of range float values are not JSON compliant" in the cell's output). 1-D arrays
    travel as binary buffers and keep their NaN (line breaks in outlines)."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if (isinstance(value, np.ndarray) and value.ndim > 1 and value.dtype.kind == "f"
            and not np.isfinite(value).all()):
        return np.where(np.isfinite(value), value, None).tolist()
    return value


def sync_figure(widget: go.FigureWidget, figure: go.Figure, traces=None, layout_keys=None) -> None:
    """Make ``widget`` show ``figure`` in one ``batch_update``.

    Traces are updated in place when their count and types are unchanged (else all are replaced); ``traces``
    limits the update to those indices, so that an unchanged picture is not sent to the browser again.
    ``layout_keys`` limits the layout update to those properties (keeping the user's zoom); by default the
    whole layout is replaced.
    """
    new_traces = figure.data
    same_shape = len(widget.data) == len(new_traces) and all(
        old.type == new.type for old, new in zip(widget.data, new_traces))
    with widget.batch_update():
        if same_shape:
            for index in range(len(new_traces)) if traces is None else traces:
                widget.data[index].update(json_safe(new_traces[index].to_plotly_json()), overwrite=True)
        else:
            widget.data = []
            widget.add_traces([json_safe(trace.to_plotly_json()) for trace in new_traces])
        if layout_keys is None or not same_shape:
            widget.layout = figure.layout
            if getattr(widget, "_fixed_width", None):
                widget.layout.width = widget._fixed_width
        else:
            widget.layout.update({key: figure.layout[key] for key in layout_keys}, overwrite=True)


def labelled(description: str, width: str = "160px") -> dict:
    """Common keyword arguments for a control with a description that is not cut off."""
    return dict(description=description, style={"description_width": width})


class ConfigSource:
    """Mixin for widgets that edit a config object others follow (a launcher follows a picker):
    ``on_config_change(callback)`` registers ``callback(widget)``, called after every change of the config."""

    def on_config_change(self, callback) -> None:
        self.__dict__.setdefault("_config_callbacks", []).append(callback)

    def _config_changed(self) -> None:
        for callback in self.__dict__.get("_config_callbacks", []):
            callback(self)
