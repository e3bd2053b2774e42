"""Augmentation previews: an image's crops and mixed samples as training draws them, and their figures."""
import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from softlab.data.crops import CropParams, normalise_boxes, sample_crop_boxes, sample_crops
from softlab.train import Mixing
from softlab.train.mixing import plan_mix
from softlab.train.preview import preview_crops, preview_mixed
from softlab.viz.augment import crop_preview_figure, label_mix_text, mixed_preview_figure
from tiny import NoiseImages

SIZE = 12


@pytest.fixture(scope="module")
def data():
    return NoiseImages(count=6, num_classes=4, channels=3)


def png_pixels(uri):
    """The pixels of a tile's PNG data URI."""
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def crops_of(data, index, count=6, params=None, seed=0, size=SIZE):
    image, target = data[index]
    return preview_crops(image, params or CropParams(), count=count, seed=seed, size=size, image_index=index,
                         target=target)


def hand_cut(image, coords, flips, size, interpolation):
    """Each crop with torchvision's resized_crop on the crop alone, flipped where asked."""
    source = F.to_dtype(image.as_subclass(torch.Tensor), torch.float32, scale=True)
    height, width = source.shape[-2:]
    out = []
    for (i, j, h, w), flip in zip(np.rint(coords.astype(np.float64) * [height, width, height, width]).astype(int),
                                  flips):
        crop = F.resized_crop(source, i, j, h, w, [size, size], interpolation=InterpolationMode(interpolation),
                              antialias=True)
        out.append(F.horizontal_flip(crop) if flip else crop)
    return torch.stack(out).clamp(0, 1)


# ----- crops
def test_crops_are_label_generations_regions_for_the_seed(data):
    params = CropParams(scale=(0.3, 0.7), ratio=(0.5, 2.0), flip_p=0.5)
    crops = crops_of(data, 2, count=7, params=params, seed=5)
    height, width = data[2][0].shape[-2:]
    coords, flips = sample_crops(height, width, 7, params, seed=5, image_index=2)
    np.testing.assert_array_equal(crops.coords, coords)
    np.testing.assert_array_equal(crops.flips, flips)
    assert (crops.image_index, crops.target) == (2, 2)
    i, j, h, w = np.rint(coords.astype(np.float64) * [height, width, height, width]).astype(int).T
    assert crops.boxes.format.value == "XYXY" and tuple(crops.boxes.canvas_size) == (height, width)
    np.testing.assert_array_equal(crops.boxes.numpy(), np.stack([j, i, j + w, i + h], axis=1))


def test_crops_with_an_epoch_are_an_online_recipes_draw(data):
    params = CropParams()
    crops = preview_crops(data[1][0], params, count=5, seed=3, size=SIZE, image_index=1, epoch=2)
    height, width = data[1][0].shape[-2:]
    boxes, flips = sample_crop_boxes(height, width, 5, params, np.random.default_rng([3, 13, 2, 1]))
    np.testing.assert_array_equal(crops.coords, normalise_boxes(boxes, height, width))
    np.testing.assert_array_equal(crops.flips, flips)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_downsampled_crops_are_torchvisions_resized_crops(data, interpolation):
    params = CropParams(scale=(0.5, 0.9), flip_p=0.5, interpolation=interpolation)
    crops = crops_of(data, 0, count=6, params=params, size=4)  # every region is larger than 4 px
    assert crops.flips.any() and not crops.flips.all()
    torch.testing.assert_close(crops.pixels, hand_cut(data[0][0], crops.coords, crops.flips, 4, interpolation),
                               rtol=0, atol=1e-6)


def test_upsampled_crops_are_torchvisions_resized_crops_too(data):
    crops = crops_of(data, 3, count=5, size=40)  # every region is smaller than 40 px: the batched path
    # the batched cutter applies resized_crop's own antialiased kernel as matrix products: equal up to float
    # rounding of sums of ~10 products of [0, 1] values (a few ulp of 1, far below 2e-5)
    torch.testing.assert_close(crops.pixels, hand_cut(data[3][0], crops.coords, crops.flips, 40, "bicubic"),
                               rtol=0, atol=2e-5)


# ----- mixing
def test_selfmix_pairs_each_crop_with_the_next_crop_of_the_same_image(data):
    crops = crops_of(data, 1, count=6)
    mixed = preview_mixed(crops, Mixing("selfmix", mixup_alpha=0.8, cutmix_alpha=0.0, prob=1.0), seed=4,
                          num_classes=4)
    assert [len(source) for source in mixed.sources] == [6]
    assert mixed.plan.partner.tolist() == [1, 2, 3, 4, 5, 0]
    assert not mixed.plan.cutmix.any() and mixed.mixed.all()
    lam = torch.tensor(mixed.plan.lam, dtype=torch.float32).view(-1, 1, 1, 1)
    partner = crops.pixels[[1, 2, 3, 4, 5, 0]]
    torch.testing.assert_close(mixed.pixels, lam * crops.pixels + (1 - lam) * partner)
    # both crops show image 1 (class 1): the mixed label is its one-hot, whatever λ
    torch.testing.assert_close(mixed.class_mix, torch.eye(4, dtype=torch.float64)[[1] * 6])
    expected = [f"{lam:.2f} × a{n} + {1 - lam:.2f} × a{(n + 1) % 6} (Mixup)" for n, lam in enumerate(mixed.plan.lam)]
    assert [label_mix_text(mixed, n) for n in range(6)] == expected


def test_cutmix_lambda_is_the_kept_area_share_of_the_pasted_box(data):
    crops = crops_of(data, 0, count=8, size=16)
    mixed = preview_mixed(crops, Mixing("selfmix", mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0), seed=2)
    assert mixed.plan.cutmix.all()
    for n in range(8):
        i, j, h, w = (int(v) for v in mixed.plan.boxes[n])
        assert mixed.plan.lam[n] == pytest.approx(1 - h * w / 16 ** 2, abs=1e-12)
        partner = (n + 1) % 8
        expected = crops.pixels[n].clone()
        expected[:, i:i + h, j:j + w] = crops.pixels[partner][:, i:i + h, j:j + w]
        torch.testing.assert_close(mixed.pixels[n], expected, rtol=0, atol=0)
        weights = torch.zeros(8, dtype=torch.float64)
        weights[n], weights[partner] = mixed.plan.lam[n], 1 - mixed.plan.lam[n]
        torch.testing.assert_close(mixed.weights[n], weights)
    torch.testing.assert_close(mixed.weights.sum(1), torch.ones(8, dtype=torch.float64))


def test_cross_image_mixing_pairs_crop_n_of_a_with_the_mirrored_crop_of_b(data):
    a, b = crops_of(data, 0, count=5), crops_of(data, 3, count=5)
    mixed = preview_mixed(a, Mixing("cross", mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5), b,
                          seed=1, num_classes=4)
    assert len(mixed) == 5 and mixed.plan.partner.tolist() == [9, 8, 7, 6, 5]
    assert [mixed.source_of(p) for p in mixed.plan.partner] == [(1, 4), (1, 3), (1, 2), (1, 1), (1, 0)]
    assert mixed.plan.cutmix.any() and not mixed.plan.cutmix.all()
    lam = mixed.plan.lam
    expected = np.zeros((5, 4))
    expected[:, 0], expected[:, 3] = lam, 1 - lam          # image 0 is class 0, image 3 class 3
    np.testing.assert_allclose(mixed.class_mix.numpy(), expected, rtol=0, atol=1e-12)
    for n in np.flatnonzero(~mixed.plan.cutmix):
        torch.testing.assert_close(mixed.pixels[n], lam[n] * a.pixels[n] + (1 - lam[n]) * b.pixels[4 - n])
    n = int(np.flatnonzero(mixed.plan.cutmix)[0])
    assert label_mix_text(mixed, n) == f"{lam[n]:.2f} × a{n} + {1 - lam[n]:.2f} × b{4 - n} (CutMix)"


def test_the_plan_is_the_trainers_draw_for_that_batch(data):
    a, b = crops_of(data, 0, count=4), crops_of(data, 5, count=4)
    mixing = Mixing("cross", prob=0.6)
    mixed = preview_mixed(a, mixing, b, seed=9, epoch=3, step=7)
    expected = plan_mix(mixing, np.repeat([0, 1], 4), SIZE, SIZE, np.random.default_rng([9, 17, 3, 7]))
    np.testing.assert_array_equal(mixed.plan.lam, expected.lam[:4])
    np.testing.assert_array_equal(mixed.plan.boxes, expected.boxes[:4])
    np.testing.assert_array_equal(mixed.plan.cutmix, expected.cutmix[:4])


def test_without_mixing_the_samples_are_the_crops(data):
    crops = crops_of(data, 2, count=4)
    for mixing in (Mixing("none"), Mixing("selfmix", prob=0.0)):
        mixed = preview_mixed(crops, mixing, num_classes=4)
        assert not mixed.mixed.any() and (mixed.plan.lam == 1).all()
        torch.testing.assert_close(mixed.pixels, crops.pixels, rtol=0, atol=0)
        assert label_mix_text(mixed, 3) == "1.00 × a3 (not mixed)"


def test_unlabelled_images_have_no_class_mix(data):
    image = data[0][0]
    crops = preview_crops(image, count=3, size=SIZE, target=-1)
    assert preview_mixed(crops, Mixing("selfmix"), num_classes=4).class_mix is None


def test_cross_mixing_without_a_partner_is_refused(data):
    with pytest.raises(ValueError, match="partner"):
        preview_mixed(crops_of(data, 0), Mixing("cross"))
    with pytest.raises(ValueError, match="same size"):
        preview_mixed(crops_of(data, 0), Mixing("cross"), crops_of(data, 1, size=SIZE + 1))


# ----- figures
def test_crop_preview_figure_shows_the_boxes_and_the_crops(data):
    image = data[4][0]
    crops = crops_of(data, 4, count=3, params=CropParams(flip_p=1.0))
    figure = crop_preview_figure(image, crops, columns=4)
    assert [trace.type for trace in figure.data] == ["image", "scatter", "scatter", "image", "image", "image"]
    for n in range(3):
        expected = (crops.pixels[n] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(png_pixels(figure.data[3 + n].source), expected)
    assert png_pixels(figure.data[0].source).shape == (*image.shape[-2:], 3)
    np.testing.assert_array_equal(png_pixels(figure.data[0].source), image.permute(1, 2, 0).numpy())
    x0, y0, x1, y1 = crops.boxes.numpy()[0].astype(float)
    np.testing.assert_array_equal(figure.data[1].x[:5], [x0, x1, x1, x0, x0])
    np.testing.assert_array_equal(figure.data[1].y[:5], [y0, y0, y1, y1, y0])
    area = float(crops.coords[0, 2]) * float(crops.coords[0, 3])
    assert figure.layout.annotations[1].text == f"crop 0 · {area:.0%} · w/h {(x1 - x0) / (y1 - y0):.2f} · flipped"


def test_mixed_preview_figure_titles_and_cutmix_boxes(data):
    crops = crops_of(data, 1, count=6, size=16)
    mixed = preview_mixed(crops, Mixing("selfmix", mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0), seed=0,
                          num_classes=4)
    figure = mixed_preview_figure(mixed, class_names=["t-shirt", "trouser", "bag", "boot"], columns=3)
    cut = np.flatnonzero(mixed.plan.cutmix)
    assert len(figure.layout.shapes) == len(cut) > 0
    for shape, n in zip(figure.layout.shapes, cut):
        i, j, h, w = mixed.plan.boxes[n]
        assert (shape.x0, shape.y0, shape.x1, shape.y1) == (j, i, j + w, i + h)
        kept = 1 - (shape.x1 - shape.x0) * (shape.y1 - shape.y0) / 16 ** 2
        assert kept == pytest.approx(mixed.plan.lam[n], abs=1e-12)
    lam = mixed.plan.lam[0]
    kind = "CutMix" if mixed.plan.cutmix[0] else "Mixup"
    assert figure.layout.annotations[0].text == f"{lam:.2f} × a0 + {1 - lam:.2f} × a1 ({kind})<br>trouser 1.00"


def test_tiles_sit_on_their_own_pixel_axes(data):
    image = data[5][0]
    crops = crops_of(data, 5, count=4)
    figure = crop_preview_figure(image, crops, columns=3)
    assert [(trace.xaxis, trace.yaxis) for trace in figure.data] == (
        [("x", "y")] * 3 + [(f"x{k}", f"y{k}") for k in (2, 3, 4, 5)])
    height, width = image.shape[-2:]
    assert figure.layout.xaxis.range == (0, width) and figure.layout.yaxis.range == (height, 0)
    assert figure.layout.yaxis5.range == (SIZE, 0) and figure.layout.yaxis5.scaleanchor == "x5"
    # 2 rows of 3: tile 4 (crop 2) opens the second row, below the first
    assert figure.layout.xaxis4.domain[0] == 0 and figure.layout.yaxis4.domain[1] < figure.layout.yaxis.domain[0]
    mixed = preview_mixed(crops, Mixing("selfmix", mixup_alpha=0.0, prob=1.0), seed=0)
    shapes = mixed_preview_figure(mixed, columns=2).layout.shapes
    assert [(shape.xref, shape.yref) for shape in shapes] == [("x", "y"), ("x2", "y2"), ("x3", "y3"), ("x4", "y4")]
