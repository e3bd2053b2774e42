"""AugmentationPicker: crop and mixing settings, with a live preview of what training draws from one image.

The preview shows the picked image's RandomResizedCrop regions (boxes on the image, then each crop as the
training loader cuts it) and the mixed samples a training step makes of them, each titled with its label mix.
``picker.crop_params`` (:class:`~softlab.data.crops.CropParams`) and ``picker.mixing``
(:class:`~softlab.train.Mixing`) are the settings shown, ready for training.
"""
from __future__ import annotations

from contextlib import contextmanager

import ipywidgets as W

from softlab.data import load_dataset
from softlab.data.crops import CropParams
from softlab.train.mixing import Mixing
from softlab.train.preview import SOURCE_NAMES, MixedPreview, preview_crops, preview_mixed
from softlab.viz.augment import crop_preview_figure, mixed_preview_figure
from softlab.viz.images import short_name

from .base import DEBOUNCE_S, ConfigSource, Debouncer, MessageLine, error_text, figure_widget, labelled, sync_figure

MODE_LABELS = {"none": "none", "selfmix": "SelfMix", "cross": "cross-image"}
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
PREVIEW_WIDTH = 880  # pixels (plotly would draw the widgets 700 px wide, too narrow for the tiles' titles)
MAX_DROPDOWN_IMAGES = 500  # larger data sets get a number box instead of a list


def image_label(dataset, index: int) -> str:
    """``"3: tabby"`` (``"3"`` for an unlabelled image)."""
    target = int(dataset.targets[index])
    return f"{index}: {short_name(dataset.classes[target], 28)}" if target >= 0 else str(index)


def image_picker(dataset, index: int, description: str) -> W.ValueWidget:
    """A list of the data set's images, or a number box for a large data set."""
    if len(dataset) <= MAX_DROPDOWN_IMAGES:
        options = [(image_label(dataset, i), i) for i in range(len(dataset))]
        return W.Dropdown(options=options, value=index, **labelled(description, "90px"))
    return W.BoundedIntText(value=index, min=0, max=len(dataset) - 1, **labelled(description, "90px"))


def slider_options() -> dict:
    return dict(continuous_update=True, layout=W.Layout(width="400px"))


def range_slider(value, low: float, high: float, description: str) -> W.FloatRangeSlider:
    """A range slider whose bounds include ``value`` (so a given setting is shown unchanged)."""
    return W.FloatRangeSlider(value=tuple(value), min=min(low, value[0]), max=max(high, value[1]), step=0.01,
                              readout_format=".2f", **slider_options(), **labelled(description))


def unit_slider(value: float, description: str, high: float = 1.0) -> W.FloatSlider:
    return W.FloatSlider(value=value, min=0.0, max=max(high, value), step=0.05, readout_format=".2f",
                         **slider_options(), **labelled(description))


class AugmentationPicker(ConfigSource, W.VBox):
    """Crop and mixing settings with a live preview: ``AugmentationPicker(load_dataset("photos"))``.

    ``dataset`` is a :class:`~softlab.data.ImageDataset` or anything :func:`~softlab.data.load_dataset`
    takes (default: the photo pack); ``image`` the previewed image, ``partner`` the image cross-image mixing
    pairs it with (default: the next one). ``crop_params`` / ``mixing`` (get/set) are the settings shown;
    ``preview`` the last :class:`~softlab.train.preview.MixedPreview` (its ``sources[0]`` the crops).
    ``refresh()`` recomputes now (control changes are debounced by ``debounce`` seconds in a running kernel).
    """

    def __init__(self, dataset=None, image: int = 0, crop_params: CropParams | None = None,
                 mixing: Mixing | None = None, count: int = 8, seed: int = 0, num_classes: int | None = None,
                 partner: int | None = None, size: int = 112, debounce: float = DEBOUNCE_S):
        self.dataset = load_dataset("photos" if dataset is None else dataset)
        if not 0 <= image < len(self.dataset) or not 0 <= (partner or 0) < len(self.dataset):
            raise IndexError(f"image and partner must lie in [0, {len(self.dataset)}) for {self.dataset.name}")
        self.num_classes = num_classes if num_classes is not None else self.dataset.num_classes
        self.crop_size = int(size)
        self._crop_params, self._mixing = crop_params or CropParams(), mixing or Mixing()
        self.preview: MixedPreview | None = None
        self._images, self._shown_images, self._syncing = {}, {}, False
        partner = (image + 1) % len(self.dataset) if partner is None else partner
        self._build_controls(image, partner, count, seed)
        self.crops_figure, self.partner_figure, self.mixed_figure = (figure_widget(width=PREVIEW_WIDTH)
                                                                     for _ in range(3))
        self._partner_box = W.Box([self.partner_figure], layout=W.Layout(width="100%"))
        self._mixed_box = W.Box([self.mixed_figure], layout=W.Layout(width="100%"))
        self.message = MessageLine()
        self._update = Debouncer(self.refresh, debounce)
        self._connect()
        super().__init__(children=self._layout(), layout=W.Layout(width="100%"))
        self.refresh()

    # ----- the configs it edits
    @property
    def crop_params(self) -> CropParams:
        self._update.flush()
        return self._crop_params

    @crop_params.setter
    def crop_params(self, params: CropParams) -> None:
        with self._quiet():
            _show_range(self.scale, params.scale)
            _show_range(self.ratio, params.ratio)
            self.flip_p.value, self.interpolation.value = params.flip_p, params.interpolation
        self.refresh()

    @property
    def mixing(self) -> Mixing:
        self._update.flush()
        return self._mixing

    @mixing.setter
    def mixing(self, mixing: Mixing) -> None:
        with self._quiet():
            self.mode.value = mixing.mode
            for name in ("mixup_alpha", "cutmix_alpha", "prob", "switch_prob"):
                slider = getattr(self, name)
                slider.max = max(slider.max, getattr(mixing, name))
                slider.value = getattr(mixing, name)
        self.refresh()

    @property
    def image(self) -> int:
        return int(self.image_picker.value)

    @image.setter
    def image(self, index: int) -> None:
        self.image_picker.value = int(index)

    @property
    def partner(self) -> int:
        return int(self.partner_picker.value)

    # ----- controls
    def _build_controls(self, image: int, partner: int, count: int, seed: int) -> None:
        crop, mixing = self._crop_params, self._mixing
        self.image_picker = image_picker(self.dataset, image, "image")
        self.partner_picker = image_picker(self.dataset, partner, "partner (b)")
        self.scale = range_slider(crop.scale, 0.0, 1.0, "scale (area share)")
        self.ratio = range_slider(crop.ratio, 0.1, 4.0, "ratio (w / h)")
        self.flip_p = unit_slider(crop.flip_p, "flip probability")
        self.interpolation = W.Dropdown(options=INTERPOLATIONS, value=crop.interpolation, **labelled("interpolation"))
        self.mode = W.ToggleButtons(options=[(label, mode) for mode, label in MODE_LABELS.items()], value=mixing.mode,
                                    description="mode", style={"description_width": "60px", "button_width": "100px"})
        self.mixup_alpha = unit_slider(mixing.mixup_alpha, "Mixup α", high=2.0)
        self.cutmix_alpha = unit_slider(mixing.cutmix_alpha, "CutMix α", high=2.0)
        self.prob = unit_slider(mixing.prob, "mix probability")
        self.switch_prob = unit_slider(mixing.switch_prob, "CutMix share (switch)")
        self.count = W.IntSlider(value=count, min=1, max=max(16, count), **slider_options(), **labelled("samples"))
        self.seed = W.BoundedIntText(value=seed, min=0, max=2**31 - 1, **labelled("seed", "40px"),
                                     layout=W.Layout(width="160px"))
        self.resample = W.Button(description="resample", icon="refresh", tooltip="draw again with the next seed")

    def _controls(self) -> tuple:
        return (self.image_picker, self.partner_picker, self.scale, self.ratio, self.flip_p, self.interpolation,
                self.mode, self.mixup_alpha, self.cutmix_alpha, self.prob, self.switch_prob, self.count, self.seed)

    def _connect(self) -> None:
        for control in self._controls():
            control.observe(self._on_change, "value")
        self.resample.on_click(lambda _: setattr(self.seed, "value", self.seed.value + 1))

    def _layout(self) -> list:
        crops = W.VBox([W.HTML("<b>crops</b>"), self.scale, self.ratio, self.flip_p, self.interpolation, self.count])
        mixing = W.VBox([W.HTML("<b>mixing</b>"), self.mode, self.mixup_alpha, self.cutmix_alpha, self.prob,
                         self.switch_prob])
        draw = W.HBox([self.image_picker, self.partner_picker, self.seed, self.resample])
        return [draw, W.HBox([crops, mixing]), self.message, self.crops_figure, self._partner_box, self._mixed_box]

    def _on_change(self, _change) -> None:
        if not self._syncing:
            self._update()

    @contextmanager
    def _quiet(self):
        self._syncing = True
        try:
            yield
        finally:
            self._syncing = False

    # ----- computing and drawing
    def refresh(self) -> None:
        """Recompute the preview for the current controls and redraw; a bad setting is reported, not raised."""
        self._update.cancel()
        self._enable_controls()
        try:
            crop_params, mixing = self._read_crop_params(), self._read_mixing()
            preview = self._compute(crop_params, mixing)
        except (ValueError, IndexError) as error:
            self.message.show(f"Not applied: {error_text(error)}\n.crop_params and .mixing keep the last valid "
                              "settings.", "error")
            return
        changed = (crop_params, mixing) != (self._crop_params, self._mixing)
        self._crop_params, self._mixing, self.preview = crop_params, mixing, preview
        self._draw(preview)
        self.message.show(self._summary(preview), "info")
        if changed:
            self._config_changed()

    def _read_crop_params(self) -> CropParams:
        return CropParams(scale=tuple(self.scale.value), ratio=tuple(self.ratio.value), flip_p=self.flip_p.value,
                          interpolation=self.interpolation.value)

    def _read_mixing(self) -> Mixing:
        return Mixing(mode=self.mode.value, mixup_alpha=self.mixup_alpha.value, cutmix_alpha=self.cutmix_alpha.value,
                      prob=self.prob.value, switch_prob=self.switch_prob.value)

    def _compute(self, crop_params: CropParams, mixing: Mixing) -> MixedPreview:
        crops = self._crops(self.image, crop_params)
        partner = self._crops(self.partner, crop_params) if mixing.mode == "cross" else None
        return preview_mixed(crops, mixing, partner, seed=self.seed.value, num_classes=self.num_classes)

    def _crops(self, index: int, crop_params: CropParams):
        return preview_crops(self._image(index), crop_params, self.count.value, self.seed.value, self.crop_size,
                             image_index=index, target=int(self.dataset.targets[index]))

    def _image(self, index: int):
        """Decoded images of the previewed and partner image, kept while they stay picked."""
        if index not in self._images:
            self._images = {key: value for key, value in self._images.items() if key in (self.image, self.partner)}
            self._images[index] = self.dataset[index][0]
        return self._images[index]

    def _draw(self, preview: MixedPreview) -> None:
        for letter, source, widget in zip(SOURCE_NAMES, preview.sources, (self.crops_figure, self.partner_figure)):
            title = (f"{letter} = image {image_label(self.dataset, source.image_index)}: {len(source)} crops "
                     f"(seed {self.seed.value})")
            figure = crop_preview_figure(self._image(source.image_index), source, title=title)
            same_image = self._shown_images.get(letter) == source.image_index
            # trace 0 is the whole image: not sent again while it stays the same
            sync_figure(widget, figure, traces=range(1, len(figure.data)) if same_image else None)
            self._shown_images[letter] = source.image_index
        mode = preview.mixing.mode
        self._partner_box.layout.display = None if mode == "cross" else "none"
        self._mixed_box.layout.display = None if mode != "none" else "none"
        if mode != "none":
            figure = mixed_preview_figure(preview, self.dataset.classes, title=self._mixed_title(preview))
            sync_figure(self.mixed_figure, figure)

    def _mixed_title(self, preview: MixedPreview) -> str:
        names = [f"{letter} = image {source.image_index}" for letter, source in zip(SOURCE_NAMES, preview.sources)]
        return f"{MODE_LABELS[preview.mixing.mode]} samples of {', '.join(names)} (label mix in each title)"

    def _summary(self, preview: MixedPreview) -> str:
        crops = f"{len(preview)} crops of image {self.image}"
        if preview.mixing.mode == "none":
            return f"{crops}; mixing off."
        mixed = int(preview.mixed.sum())
        cutmix = int(preview.plan.cutmix.sum())
        return (f"{crops}; {MODE_LABELS[preview.mixing.mode]}: {mixed} of {len(preview)} samples mixed "
                f"({cutmix} by CutMix, {mixed - cutmix} by Mixup).")

    def _enable_controls(self) -> None:
        off = self.mode.value == "none"
        for slider in (self.mixup_alpha, self.cutmix_alpha, self.prob, self.switch_prob):
            slider.disabled = off
        self.partner_picker.disabled = self.mode.value != "cross"


def _show_range(slider: W.FloatRangeSlider, value) -> None:
    """Set a range slider to ``value``, widening its bounds first where needed."""
    slider.min, slider.max = min(slider.min, value[0]), max(slider.max, value[1])
    slider.value = tuple(value)
