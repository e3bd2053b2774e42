"""CalibrationExplorer: FerKD's thresholds on sliders, and what they do to one image's crops and the whole store.

Every change redraws, for the picked image, the crop boxes by category, the hard-region mask and the y_s
histogram with the threshold lines, and the category shares of this image, the whole store and each class
(with the number of images left without a kept crop). ``explorer.calibration`` is the
:class:`~softlab.calibrate.Calibration` shown, ready for training.
"""
from __future__ import annotations

import html

import ipywidgets as W
import numpy as np

from softlab.calibrate import CATEGORIES, Calibration, CategoryCounter
from softlab.calibrate.ferkd import HARD, IMPORTANT
from softlab.viz import (MASK_STATISTICS, CATEGORY_LABELS, category_share_figure, crop_boxes_figure,
                         hard_region_figure, ys_histogram_figure)
from softlab.viz.crops import image_title
from softlab.viz.inputs import check_has_labels, image_thresholds

from .base import (DEBOUNCE_S, ConfigSource, Debouncer, MessageLine, figure_widget, labelled, side_by_side,
                   sync_figure)

THRESHOLDS = ("t_low", "t_mid", "t_top")
THRESHOLD_LABELS = {"t_low": "T_L", "t_mid": "T_M", "t_top": "T_T"}
IMAGE_HEIGHT = 560
BOXES_LEGEND = dict(orientation="h", x=0, y=0, yanchor="top", title=dict(text=""), font=dict(size=11))
HISTOGRAM_LEGEND = dict(BOXES_LEGEND, y=-0.22)  # below the x axis and its title
MASK_CHOICES = ("local_y_s", "local_hard_share", "majority", "mean_y_s", "min_y_s", "coverage")
FIGURE_WIDTH = 470  # pixels: two figures side by side in a notebook's output area (they wrap where it is narrower)


def store_and_dataset(store, dataset, workspace):
    """The label store and its data set, given directly or by a workspace (shared by the explorer and inspector)."""
    if workspace is not None:
        store = store if store is not None else workspace.store
        dataset = dataset if dataset is not None else workspace.dataset
    if store is None or dataset is None:
        raise ValueError("CalibrationExplorer needs a label store and the data set it labels: pass "
                         "workspace=Workspace.fashion_mnist() (or .photos()), or store= and dataset=")
    if len(dataset) != store.num_images:
        raise ValueError(f"the store labels {store.num_images} images but the data set has {len(dataset)}: pass the "
                         "data set the store was generated from")
    return store, dataset


class CalibrationExplorer(ConfigSource, W.VBox):
    """FerKD calibration, live: ``CalibrationExplorer(workspace=ws)`` or ``(store=..., dataset=...)``.

    ``calibration`` (get/set) is the setting shown; ``image`` (get/set) the picked image. ``refresh()`` redraws
    now (slider changes are debounced by ``debounce`` seconds in a running kernel).
    """

    def __init__(self, store=None, dataset=None, calibration: Calibration | None = None, image: int = 0,
                 workspace=None, max_boxes: int = 60, mask_grid: int = 128, class_rows: int = 20,
                 debounce: float = DEBOUNCE_S):
        self.store, self.dataset = store_and_dataset(store, dataset, workspace)
        self.counter = CategoryCounter.for_store(self.store)
        self.max_boxes, self.mask_grid, self.class_rows = max_boxes, mask_grid, class_rows
        self.counts, self.last_figures = None, {}
        self._image_tensor, self._shown_image, self._syncing = None, None, False
        calibration = calibration or Calibration()
        self._build_controls(calibration, image)
        self.boxes_figure, self.mask_figure = figure_widget(width=FIGURE_WIDTH), figure_widget(width=FIGURE_WIDTH)
        self.histogram_figure, self.shares_figure = figure_widget(width=FIGURE_WIDTH), figure_widget(width=FIGURE_WIDTH)
        self.summary, self.message = W.HTML(), MessageLine()
        self._refresh = Debouncer(self.refresh, debounce)
        self._connect()
        super().__init__(children=self._layout(), layout=W.Layout(width="100%"))
        self.refresh()

    # ----- the config it edits
    @property
    def calibration(self) -> Calibration:
        return Calibration(t_low=self.sliders["t_low"].value, t_mid=self.sliders["t_mid"].value,
                           t_top=self.sliders["t_top"].value, epsilon=self.epsilon.value, mode=self.mode.value)

    @calibration.setter
    def calibration(self, calibration: Calibration) -> None:
        self._syncing = True
        try:
            self.mode.value, self.epsilon.value = calibration.mode, calibration.epsilon
            for name in THRESHOLDS:
                self.sliders[name].value = getattr(calibration, name)
        finally:
            self._syncing = False
        self.refresh()

    @property
    def image(self) -> int:
        return int(self.image_picker.value)

    @image.setter
    def image(self, index: int) -> None:
        self.image_picker.value = int(index)
        self.refresh()

    # ----- controls
    def _build_controls(self, calibration: Calibration, image: int) -> None:
        slider = dict(min=0.0, max=1.0, step=0.001, readout_format=".3f", continuous_update=True,
                      layout=W.Layout(width="420px"))
        self.sliders = {name: W.FloatSlider(value=getattr(calibration, name), **slider,
                                            **labelled(THRESHOLD_LABELS[name], "40px")) for name in THRESHOLDS}
        self.epsilon = W.FloatSlider(value=calibration.epsilon, min=0.0, max=0.5, step=0.01, readout_format=".2f",
                                     continuous_update=True, layout=W.Layout(width="420px"), **labelled("ε", "40px"))
        self.mode = W.ToggleButtons(options=[("absolute y_s", "absolute"), ("per-image quantile", "quantile")],
                                    value=calibration.mode, description="thresholds",
                                    style={"button_width": "150px"})
        self.image_picker = W.IntSlider(value=int(image), min=0, max=self.store.num_images - 1, step=1,
                                        continuous_update=False, layout=W.Layout(width="420px"),
                                        **labelled("image", "50px"))
        self.previous_image = W.Button(description="◀", layout=W.Layout(width="40px"), tooltip="previous image")
        self.next_image = W.Button(description="▶", layout=W.Layout(width="40px"), tooltip="next image")
        self.image_label = W.HTML()
        self.statistic = W.Dropdown(options=[(MASK_STATISTICS[k], k) for k in MASK_CHOICES], value="local_y_s",
                                    **labelled("mask", "40px"), layout=W.Layout(width="380px"))
        self.opacity = W.FloatSlider(value=0.55, min=0.0, max=1.0, step=0.05, continuous_update=True,
                                     **labelled("opacity", "60px"), layout=W.Layout(width="300px"))

    def _connect(self) -> None:
        for name, slider in self.sliders.items():
            slider.observe(lambda change, name=name: self._on_threshold(name, change["new"]), "value")
        for control in (self.epsilon, self.mode, self.image_picker, self.statistic):
            control.observe(self._on_setting, "value")
        self.opacity.observe(self._on_opacity, "value")
        self.previous_image.on_click(lambda _: self._step_image(-1))
        self.next_image.on_click(lambda _: self._step_image(1))

    def _layout(self) -> list:
        thresholds = W.VBox([self.mode, *self.sliders.values(), self.epsilon])
        picker = W.VBox([W.HBox([self.image_picker, self.previous_image, self.next_image]), self.image_label,
                         self.statistic, self.opacity])
        return [W.HBox([thresholds, picker], layout=W.Layout(flex_flow="row wrap")), self.message, self.summary,
                side_by_side(self.boxes_figure, self.mask_figure),
                side_by_side(self.histogram_figure, self.shares_figure)]

    def _on_threshold(self, name: str, value: float) -> None:
        """Keep T_L <= T_M <= T_T: moving one threshold past another pushes that one along."""
        if self._syncing:
            return
        self._syncing = True
        try:
            order = list(THRESHOLDS)
            position = order.index(name)
            for other in order[position + 1:]:
                self.sliders[other].value = max(self.sliders[other].value, value)
            for other in order[:position]:
                self.sliders[other].value = min(self.sliders[other].value, value)
        finally:
            self._syncing = False
        self._refresh()

    def _on_setting(self, change) -> None:
        if change["owner"] is self.mode:
            self._describe_thresholds()
        if not self._syncing:
            self._refresh()

    def _on_opacity(self, change) -> None:
        with self.mask_figure.batch_update():
            for trace in self.mask_figure.data[1:]:
                if trace.type == "heatmap":
                    trace.opacity = change["new"]

    def _step_image(self, step: int) -> None:
        self.image_picker.value = (self.image + step) % self.store.num_images

    def _describe_thresholds(self) -> None:
        suffix = " q" if self.mode.value == "quantile" else ""
        for name, slider in self.sliders.items():
            slider.description = THRESHOLD_LABELS[name] + suffix

    # ----- drawing
    def refresh(self) -> None:
        """Recompute and redraw everything for the current settings (what a debounced change ends in)."""
        self._refresh.cancel()
        calibration = self.calibration
        index = self.image
        try:
            check_has_labels(self.store, index)
        except ValueError as error:  # an image left undecodable at generation: the counts go on, no picture
            self.counts = self.counter.counts(calibration)
            self.message.show(f"{error}; pick another image", "warning")
            self._config_changed()
            return
        new_image = index != self._shown_image
        if new_image:
            self._image_tensor = self.dataset[index][0]
        self.counts = self.counter.counts(calibration)
        figures = self._figures(calibration, index)
        for name, widget in (("boxes", self.boxes_figure), ("mask", self.mask_figure)):
            # the picture (trace 0) and the axes change only with the image
            sync_figure(widget, figures[name], traces=None if new_image else range(1, len(figures[name].data)),
                        layout_keys=None if new_image else ("title",))
        sync_figure(self.histogram_figure, figures["histogram"], layout_keys=("title", "shapes", "annotations"))
        sync_figure(self.shares_figure, figures["shares"], layout_keys=("height",))
        self.last_figures, self._shown_image = figures, index
        self.image_label.value = f"<b>{html.escape(image_title(self.store, index))}</b>"
        self.summary.value = self._summary_html(calibration, index)
        self._warn_about_images_without_crops()
        self._config_changed()

    def _figures(self, calibration: Calibration, index: int) -> dict:
        image, store = self._image_tensor, self.store
        mask = hard_region_figure(image, store, index, calibration, statistics=[self.statistic.value],
                                  opacity=self.opacity.value, max_display=self.mask_grid)
        mask.layout.updatemenus, mask.layout.sliders = (), ()  # this widget's own controls replace them
        mask.layout.margin.t, mask.layout.height = 50, IMAGE_HEIGHT
        boxes = crop_boxes_figure(image, store, index, calibration, max_boxes=self.max_boxes)
        boxes.layout.legend = BOXES_LEGEND  # below the image: beside it, it takes half of a half-width figure
        boxes.layout.margin.b, boxes.layout.height = 10, IMAGE_HEIGHT
        histogram = ys_histogram_figure(store, calibration, index)
        histogram.layout.legend, histogram.layout.height = HISTOGRAM_LEGEND, 480
        histogram.layout.margin.b, histogram.layout.margin.r = 110, 40  # room for the legend and the T_T label
        return {"boxes": boxes,
                "mask": mask,
                "histogram": histogram,
                "shares": category_share_figure(self._share_rows(index), title="Category shares")}

    def _share_rows(self, index: int) -> dict:
        counts = self.counts
        rows = {f"image {index}": counts["per_image"][index], f"all {self.store.num_images} images": counts["overall"]}
        present = np.flatnonzero(counts["per_class"].sum(axis=1))
        for label in present[:self.class_rows]:
            rows[f"class: {self.store.class_names[label][:24]}"] = counts["per_class"][label]
        return rows

    def _summary_html(self, calibration: Calibration, index: int) -> str:
        counts = self.counts
        thresholds = image_thresholds(self.store, index, calibration)
        cut = ", ".join(f"{THRESHOLD_LABELS[n]} = {t:.3f}" for n, t in zip(THRESHOLDS, thresholds))
        header = "".join(f"<th style='padding:0 8px'>{CATEGORY_LABELS[c]}</th>" for c in CATEGORIES)
        rows = "".join(
            f"<tr><td>{label}</td>" + "".join(f"<td style='text-align:right;padding:0 8px'>{int(v)}</td>"
                                              for v in values) + f"<td style='text-align:right'>{_kept(values)}</td></tr>"
            for label, values in ((f"image {index}", counts["per_image"][index]),
                                  (f"all {self.store.num_images} images", counts["overall"])))
        return (f"<div class='softlab-calibration-summary'>Image {index} is cut at {cut}."
                f"<table><tr><th></th>{header}<th>kept</th></tr>{rows}</table>"
                f"<span class='softlab-no-kept'>Images with no kept crop: "
                f"<b>{counts['images_without_kept_crops']}</b></span></div>")

    def _warn_about_images_without_crops(self) -> None:
        missing = self.counts["images_without_kept_crops"]
        if missing:
            self.message.show(f"{missing} of {self.store.num_images} images keep no crop under this calibration: "
                              "training skips them. Lower T_L or raise T_T to keep them.", "warning")
        else:
            self.message.clear()


def _kept(values) -> str:
    values = np.asarray(values)
    total = values.sum()
    kept = values[HARD] + values[IMPORTANT]
    return f"{kept} ({kept / total:.0%})" if total else "0"
