"""SoftLabelInspector: one crop's soft label, raw and calibrated, and what the teacher looked at.

Pick a crop by clicking its outline in the image, a tile in the crop grid, or with the crop slider; the widget
shows the stored teacher label beside the label FerKD trains on, the crop's y_s, entropy and category, and (on
demand, with a spinner) a captum attribution of the teacher on that crop. Given a CalibrationExplorer it follows
the explorer's image and calibration.
"""
from __future__ import annotations

import html

import ipywidgets as W
import numpy as np

from softlab.calibrate import CATEGORIES, Calibration
from softlab.data.crops import pixel_boxes
from softlab.viz import (ATTRIBUTION_METHODS, CATEGORY_LABELS, crop_attribution_figure, crop_boxes_figure,
                         crop_grid_figure, spread_by_y_s, topk_bars_figure)
from softlab.viz.attributions import METHOD_TITLES
from softlab.viz.crops import image_title
from softlab.viz.inputs import image_categories, image_size, image_y_s

from .base import MessageLine, Spinner, error_text, figure_widget, labelled, side_by_side, sync_figure
from .calibration import BOXES_LEGEND, FIGURE_WIDTH, IMAGE_HEIGHT, store_and_dataset

GRID_WIDTH = 560  # the crop grid: 4 columns of crops

HIGHLIGHT = dict(type="rect", line=dict(color="#e040fb", width=4), fillcolor="rgba(0,0,0,0)", name="picked crop")


class SoftLabelInspector(W.VBox):
    """``SoftLabelInspector(workspace=ws, explorer=explorer)`` or ``(store=..., dataset=..., teacher=...)``.

    ``image`` and ``crop`` (get/set) pick what is shown; ``explain()`` computes the attribution now.
    """

    def __init__(self, store=None, dataset=None, teacher=None, calibration: Calibration | None = None,
                 image: int = 0, crop: int | None = None, workspace=None, explorer=None, max_boxes: int = 60,
                 grid_count: int = 12, top_k: int = 10):
        if explorer is not None:
            store, dataset = explorer.store, explorer.dataset
        self.store, self.dataset = store_and_dataset(store, dataset, workspace)
        self.teacher = teacher if teacher is not None else getattr(workspace, "teacher", None)
        self.explorer, self._calibration = explorer, calibration or Calibration()
        self.max_boxes, self.grid_count, self.top_k = max_boxes, grid_count, top_k
        self._image_tensor, self._shown_image, self._updating = None, None, False
        self._grid_key = None  # (image, categories of its grid's crops) the crop grid shows
        self._build_controls(explorer.image if explorer is not None else image)
        self.boxes_figure, self.bars_figure = figure_widget(width=FIGURE_WIDTH), figure_widget(width=FIGURE_WIDTH)
        self.grid_figure, self.attribution_figure = figure_widget(width=GRID_WIDTH), figure_widget()
        self.attribution_box = W.Box([self.attribution_figure], layout=W.Layout(display="none"))
        self.attribution_for = None  # (image, crop, method) the attribution shown was computed for
        self.info, self.message, self.spinner = W.HTML(), MessageLine(), Spinner()
        self._connect()
        super().__init__(children=self._layout(), layout=W.Layout(width="100%"))
        self._show_image(crop)
        if explorer is not None:
            explorer.on_config_change(self._follow_explorer)

    @property
    def calibration(self) -> Calibration:
        return self.explorer.calibration if self.explorer is not None else self._calibration

    @calibration.setter
    def calibration(self, calibration: Calibration) -> None:
        self._calibration = calibration
        self._redraw_labels()

    @property
    def image(self) -> int:
        return int(self.image_picker.value)

    @image.setter
    def image(self, index: int) -> None:
        self.image_picker.value = int(index)

    @property
    def crop(self) -> int:
        return int(self.crop_picker.value)

    @crop.setter
    def crop(self, index: int) -> None:
        self.crop_picker.value = int(index)

    # ----- controls
    def _build_controls(self, image: int) -> None:
        self.image_picker = W.IntSlider(value=int(image), min=0, max=self.store.num_images - 1,
                                        continuous_update=False, **labelled("image", "50px"))
        self.crop_picker = W.IntSlider(value=0, min=0, max=self.store.num_crops - 1, continuous_update=False,
                                       **labelled("crop", "50px"))
        self.method = W.Dropdown(options=[(METHOD_TITLES[m], m) for m in ATTRIBUTION_METHODS],
                                 value="grad_cam", **labelled("attribution", "80px"))
        self.explain_button = W.Button(description="Explain crop", icon="search",
                                       tooltip="compute the teacher's attribution on this crop",
                                       disabled=self.teacher is None)

    def _connect(self) -> None:
        self.image_picker.observe(lambda change: self._show_image(None), "value")
        self.crop_picker.observe(lambda change: self._show_crop(), "value")
        self.method.observe(lambda change: self._mark_attribution_stale(), "value")
        self.explain_button.on_click(lambda _: self.explain())

    def _layout(self) -> list:
        note = "" if self.teacher is not None else " (attributions need the teacher: pass teacher=)"
        controls = W.HBox([self.image_picker, self.crop_picker, self.method, self.explain_button, self.spinner],
                          layout=W.Layout(flex_flow="row wrap"))
        return [controls, W.HTML(f"<i>Click a crop's outline or a tile to inspect it.{html.escape(note)}</i>"),
                self.message, self.info,
                side_by_side(self.boxes_figure, self.bars_figure), side_by_side(self.grid_figure, self.attribution_box)]

    def _follow_explorer(self, explorer) -> None:
        if explorer.image != self.image:
            self.image = explorer.image  # redraws everything
        else:
            self._redraw_labels()

    # ----- drawing
    def _show_image(self, crop: int | None) -> None:
        index = self.image
        self._image_tensor = self.dataset[index][0]
        self._updating = True
        try:
            self.crop = self._lowest_y_s_crop(index) if crop is None else crop
        finally:
            self._updating = False
        self._redraw_labels(new_image=True)

    def _lowest_y_s_crop(self, index: int) -> int:
        return int(np.argmin(np.asarray(self.store.y_s[index], dtype=np.float32)))

    def _redraw_labels(self, new_image: bool = False) -> None:
        """Boxes and grid (their categories follow the calibration), then the picked crop."""
        index, calibration = self.image, self.calibration
        boxes = crop_boxes_figure(self._image_tensor, self.store, index, calibration, max_boxes=self.max_boxes)
        boxes.layout.legend, boxes.layout.height = BOXES_LEGEND, IMAGE_HEIGHT
        sync_figure(self.boxes_figure, boxes, traces=None if new_image else range(1, len(boxes.data)),
                    layout_keys=None if new_image else ())
        self._redraw_grid(index, calibration)
        for trace in self.boxes_figure.data[1:]:
            trace.on_click(self._on_box_click)
        for trace in self.grid_figure.data:
            trace.on_click(self._on_tile_click)
        self._show_crop()

    def _redraw_grid(self, index: int, calibration: Calibration) -> None:
        """The crop grid, redrawn only when its crops' categories change. Its crops depend on the image alone, so a
        new calibration updates the tile titles and borders and never sends the crops' pixels again."""
        crops = spread_by_y_s(image_y_s(self.store, index), self.grid_count)
        key = (index, tuple(image_categories(self.store, index, calibration)[crops].tolist()))
        if key == self._grid_key:
            return
        same_image = self._grid_key is not None and self._grid_key[0] == index
        grid = crop_grid_figure(self._image_tensor, self.store, index, calibration, crops=crops, columns=4, size=96)
        sync_figure(self.grid_figure, grid, traces=() if same_image else None,
                    layout_keys=("annotations", "shapes") if same_image else None)
        self._grid_key = key

    def _show_crop(self) -> None:
        if self._updating:
            return
        index, crop, calibration = self.image, self.crop, self.calibration
        sync_figure(self.bars_figure, topk_bars_figure(self.store, index, crop, calibration, k=self.top_k))
        self.boxes_figure.layout.shapes = [self._highlight(index, crop)]
        self.info.value = self._info_html(index, crop, calibration)
        self._mark_attribution_stale()

    def _highlight(self, index: int, crop: int) -> dict:
        height, width = image_size(self._image_tensor)
        top, left, h, w = pixel_boxes(np.asarray(self.store.coords[index], dtype=np.float32), height, width)[crop]
        return dict(HIGHLIGHT, x0=float(left), y0=float(top), x1=float(left + w), y1=float(top + h))

    def _info_html(self, index: int, crop: int, calibration: Calibration) -> str:
        category = CATEGORIES[int(image_categories(self.store, index, calibration)[crop])]
        y_s = float(self.store.y_s[index, crop])
        entropy = float(self.store.entropy[index, crop])
        flipped = " (flipped)" if bool(self.store.flip[index, crop]) else ""
        return (f"<div class='softlab-crop-info'><b>{html.escape(image_title(self.store, index))}, crop {crop}"
                f"{flipped}</b>: category <b class='softlab-category'>{CATEGORY_LABELS[category]}</b>, "
                f"y_s = <b class='softlab-y-s'>{y_s:.4f}</b>, entropy = {entropy:.3f} nats</div>")

    def _on_box_click(self, trace, points, state) -> None:
        if points.point_inds:
            crop = int(trace.customdata[points.point_inds[0]])
            if crop >= 0:
                self.crop = crop

    def _on_tile_click(self, trace, points, state) -> None:
        if trace.meta is not None:
            self.crop = int(trace.meta)

    # ----- attributions
    def _mark_attribution_stale(self) -> None:
        shown = (self.image, self.crop, self.method.value)
        if self.attribution_for is not None and self.attribution_for != shown:
            self.attribution_figure.layout.title = "(another crop or method: press Explain crop)"

    def explain(self) -> None:
        """The teacher's attribution (the chosen captum method) on the picked crop, for the ground-truth class."""
        if self.teacher is None:
            self.message.show("No teacher to explain: pass teacher= (or a workspace with one).", "warning")
            return
        method = self.method.value
        self.spinner.start(f"computing {METHOD_TITLES[method]}…")
        self.explain_button.disabled = True
        try:
            figure = crop_attribution_figure(self.teacher, self._image_tensor, self.store, self.image, self.crop,
                                             methods=(method,))
            sync_figure(self.attribution_figure, figure)
            self.attribution_box.layout.display = None
            self.attribution_for = (self.image, self.crop, method)
            self.message.clear()
        except Exception as error:  # shown in the widget; the notebook keeps running
            self.message.show(f"Attribution failed: {error_text(error)}", "error")
        finally:
            self.spinner.stop()
            self.explain_button.disabled = False
