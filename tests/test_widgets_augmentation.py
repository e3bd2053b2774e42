"""AugmentationPicker driven from Python: a control changes → the configs, the preview and the figures follow."""
import asyncio
import base64
import io
import re

import ipywidgets as W
import numpy as np
import pytest
import torch
from PIL import Image

from softlab.data.crops import CropParams, sample_crops
from softlab.train import Mixing
from softlab.train.preview import preview_crops
from softlab.widgets import AugmentationPicker
from softlab.widgets.augmentation import image_picker
from tiny import NoiseImages

COUNT, SIZE = 4, 12
MIX_TITLE = re.compile(r"^(\d\.\d\d) × a(\d+)(?: \+ (\d\.\d\d) × ([ab])(\d+))? \((CutMix|Mixup|not mixed)\)<br>(.*)$")


@pytest.fixture(scope="module")
def data():
    return NoiseImages(count=6, num_classes=4, channels=3)


@pytest.fixture
def picker(data):
    return AugmentationPicker(data, image=0, count=COUNT, size=SIZE, debounce=0)


def tile_z(pixels):
    return (pixels * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def png_pixels(uri):
    """The pixels of a tile's PNG data URI."""
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def expected_crops(data, index, params, seed=0):
    image, target = data[index]
    return preview_crops(image, params, count=COUNT, seed=seed, size=SIZE, image_index=index, target=target)


def mix_titles(picker):
    return [MIX_TITLE.match(annotation.text) for annotation in picker.mixed_figure.layout.annotations]


def test_defaults_show_the_crops_and_hide_the_mixing(picker, data):
    assert picker.crop_params == CropParams() and picker.mixing == Mixing()
    assert isinstance(picker, W.VBox) and picker.message.kind == "info"
    assert [trace.type for trace in picker.crops_figure.data] == ["image", "scatter", "scatter"] + ["image"] * COUNT
    assert picker._mixed_box.layout.display == "none" and picker._partner_box.layout.display == "none"
    assert picker.partner == 1 and picker.partner_picker.disabled and picker.prob.disabled


def test_scale_slider_changes_the_crops_to_the_librarys(picker, data):
    picker.scale.value = (0.3, 0.6)
    params = CropParams(scale=(0.3, 0.6))
    assert picker.crop_params == params
    height, width = data[0][0].shape[-2:]
    coords, flips = sample_crops(height, width, COUNT, params, seed=0, image_index=0)
    np.testing.assert_array_equal(picker.preview.sources[0].coords, coords)
    expected = expected_crops(data, 0, params)
    for n in range(COUNT):
        np.testing.assert_array_equal(png_pixels(picker.crops_figure.data[3 + n].source), tile_z(expected.pixels[n]))
    x0, y0, x1, y1 = expected.boxes.numpy()[0].astype(float)
    np.testing.assert_array_equal(picker.crops_figure.data[1].x[:5], [x0, x1, x1, x0, x0])


def test_ratio_flip_and_interpolation_reach_crop_params(picker):
    picker.ratio.value = (0.5, 2.0)
    picker.flip_p.value = 1.0
    picker.interpolation.value = "nearest"
    assert picker.crop_params == CropParams(ratio=(0.5, 2.0), flip_p=1.0, interpolation="nearest")
    assert picker.preview.sources[0].flips.all()
    titles = [annotation.text for annotation in picker.crops_figure.layout.annotations][1:]
    assert len(titles) == COUNT and all(title.endswith(" · flipped") for title in titles)


def test_selfmix_tiles_mix_consecutive_crops_of_the_image(picker):
    picker.mode.value = "selfmix"
    assert picker.mixing == Mixing("selfmix", mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5)
    assert picker._mixed_box.layout.display is None and picker._partner_box.layout.display == "none"
    plan, shapes = picker.preview.plan, list(picker.mixed_figure.layout.shapes)
    assert plan.cutmix.any()
    for n, match in enumerate(mix_titles(picker)):
        lam, own, rest, source, partner, kind, classes = match.groups()
        assert (int(own), source, int(partner), kind) == (n, "a", (n + 1) % COUNT, picker.preview.kind(n))
        assert float(lam) == round(plan.lam[n], 2) and float(rest) == round(1 - plan.lam[n], 2)
        assert classes == "c0 1.00"                          # both crops of image 0: class 0 whatever λ
        np.testing.assert_array_equal(png_pixels(picker.mixed_figure.data[n].source), tile_z(picker.preview.pixels[n]))
        if kind == "CutMix":                                 # λ = the share of the tile outside the dotted box
            shape = shapes.pop(0)
            assert 1 - (shape.x1 - shape.x0) * (shape.y1 - shape.y0) / SIZE ** 2 == pytest.approx(plan.lam[n])
            inside = np.zeros((SIZE, SIZE), bool)
            inside[int(shape.y0):int(shape.y1), int(shape.x0):int(shape.x1)] = True
            tile = png_pixels(picker.mixed_figure.data[n].source)
            own, pasted = (png_pixels(picker.crops_figure.data[3 + k].source) for k in (n, int(partner)))
            np.testing.assert_array_equal(tile[inside], pasted[inside])
            np.testing.assert_array_equal(tile[~inside], own[~inside])
    assert not shapes


def test_cross_mixing_pairs_with_the_partner_images_mirrored_crops(picker, data):
    picker.mode.value = "cross"
    picker.partner_picker.value = 3
    assert not picker.partner_picker.disabled and picker._partner_box.layout.display is None
    partner = expected_crops(data, 3, CropParams())
    for n in range(COUNT):
        np.testing.assert_array_equal(png_pixels(picker.partner_figure.data[3 + n].source), tile_z(partner.pixels[n]))
    lam = picker.preview.plan.lam
    for n, match in enumerate(mix_titles(picker)):
        _, own, _, source, crop, _, classes = match.groups()
        assert (int(own), source, int(crop)) == (n, "b", COUNT - 1 - n)
        shares = {"c0": lam[n], "c3": 1 - lam[n]}            # image 0 is class 0, image 3 class 3
        expected = " · ".join(f"{name} {shares[name]:.2f}" for name in sorted(shares, key=lambda k: -shares[k]))
        assert classes == expected
    torch.testing.assert_close(picker.preview.class_mix.sum(1), torch.ones(COUNT, dtype=torch.float64))
    assert picker.mixed_figure.layout.title.text.startswith("cross-image samples of a = image 0, b = image 3")


def test_bad_settings_show_a_message_and_keep_the_last_valid_config(picker):
    changes = []
    picker.on_config_change(lambda widget: changes.append(widget.crop_params))
    picker.scale.value = (0.0, 0.5)
    assert picker.message.kind == "error" and "crop scale must satisfy 0 < low" in picker.message.text
    assert picker.crop_params == CropParams() and changes == []
    picker.mode.value = "selfmix"
    picker.mixup_alpha.value, picker.cutmix_alpha.value = 0.0, 0.0
    assert picker.message.kind == "error" and picker.mixing == Mixing()
    picker.scale.value = (0.2, 0.5)
    assert "needs mixup_alpha > 0 or cutmix_alpha > 0" in picker.message.text and changes == []
    picker.cutmix_alpha.value = 1.0
    assert picker.message.kind == "info"
    assert picker.mixing == Mixing("selfmix", mixup_alpha=0.0, cutmix_alpha=1.0)
    assert changes == [CropParams(scale=(0.2, 0.5))]
    assert picker.preview.plan.cutmix.all()


def test_linked_widgets_hear_each_config_change_once(picker):
    heard = []
    picker.on_config_change(lambda widget: heard.append((widget.crop_params.flip_p, widget.mixing.mode)))
    picker.flip_p.value = 0.25
    picker.mode.value = "selfmix"
    picker.seed.value = 4                                   # a new draw, the same config
    assert heard == [(0.25, "none"), (0.25, "selfmix")]


def test_setting_the_configs_updates_the_controls(picker):
    params = CropParams(scale=(0.2, 0.5), ratio=(0.25, 5.0), flip_p=0.0, interpolation="bilinear")
    picker.crop_params = params
    assert picker.crop_params == params and picker.ratio.value == (0.25, 5.0) and picker.ratio.max == 5.0
    mixing = Mixing("cross", mixup_alpha=0.0, cutmix_alpha=3.0, prob=0.5, switch_prob=0.0)
    picker.mixing = mixing
    assert picker.mixing == mixing and picker.cutmix_alpha.value == 3.0 and picker.mode.value == "cross"
    assert not picker.preview.plan.lam.tolist() == [1.0] * COUNT and picker.preview.mixed.any()


def test_resample_draws_with_the_next_seed_and_the_image_picker_switches_image(picker, data):
    picker.resample.click()
    assert picker.seed.value == 1
    height, width = data[0][0].shape[-2:]
    np.testing.assert_array_equal(picker.preview.sources[0].coords,
                                  sample_crops(height, width, COUNT, CropParams(), seed=1, image_index=0)[0])
    picker.image_picker.value = 2
    height, width = data[2][0].shape[-2:]
    crops = picker.preview.sources[0]
    assert crops.image_index == 2 and tuple(crops.boxes.canvas_size) == (height, width)
    np.testing.assert_array_equal(crops.coords, sample_crops(height, width, COUNT, CropParams(), 1, 2)[0])
    assert picker.crops_figure.layout.title.text == "a = image 2: c2: 4 crops (seed 1)"
    picker.image = 5
    assert picker.image_picker.value == 5 and picker.preview.sources[0].image_index == 5


def test_an_image_outside_the_data_set_is_refused(data):
    with pytest.raises(IndexError, match=r"\[0, 6\)"):
        AugmentationPicker(data, image=6, size=SIZE)


def test_grey_images_and_the_count_slider(data):
    picker = AugmentationPicker(NoiseImages(count=3, num_classes=2, channels=1), count=2, size=SIZE, debounce=0,
                                mixing=Mixing("cross"))
    picker.count.value = 3
    assert len(picker.preview) == 3 and len(picker.mixed_figure.data) == 3
    assert png_pixels(picker.mixed_figure.data[0].source).shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(png_pixels(picker.crops_figure.data[3].source),
                                  tile_z(picker.preview.sources[0].pixels[0].expand(3, -1, -1)))


def test_large_data_sets_get_a_number_box():
    assert isinstance(image_picker(NoiseImages(count=6), 2, "image"), W.Dropdown)
    box = image_picker(NoiseImages(count=501), 7, "image")
    assert isinstance(box, W.BoundedIntText) and (box.value, box.max) == (7, 500)


def test_a_burst_of_changes_in_a_running_loop_redraws_once(data):
    picker = AugmentationPicker(data, count=COUNT, size=SIZE)
    heard = []
    picker.on_config_change(lambda widget: heard.append(widget._crop_params.scale))

    async def drag():
        for high in (0.5, 0.6, 0.7):
            picker.scale.value = (0.1, high)
        assert heard == [] and picker._update.pending
        await asyncio.sleep(0.3)

    asyncio.run(drag())
    assert heard == [(0.1, 0.7)]
