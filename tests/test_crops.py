import numpy as np
import pytest
import torch
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from softlab.data.crops import (CropParams, crop_area_fraction, crop_rng, cut_crops, normalise_boxes, pixel_boxes,
                                sample_crop_boxes, sample_crops, sample_crops_many, to_bounding_boxes)


def test_same_seed_and_image_give_the_same_crops():
    a = sample_crops(224, 300, 500, CropParams(), seed=7, image_index=3)
    b = sample_crops(224, 300, 500, CropParams(), seed=7, image_index=3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_other_image_or_seed_gives_other_crops():
    base = sample_crops(224, 224, 50, CropParams(), seed=0, image_index=0)[0]
    assert not np.array_equal(base, sample_crops(224, 224, 50, CropParams(), seed=0, image_index=1)[0])
    assert not np.array_equal(base, sample_crops(224, 224, 50, CropParams(), seed=1, image_index=0)[0])


def test_boxes_lie_inside_the_image_and_follow_scale_and_ratio():
    boxes, _ = sample_crop_boxes(400, 600, 2000, CropParams(), np.random.default_rng(0))
    i, j, h, w = boxes.T
    assert (i >= 0).all() and (j >= 0).all() and (i + h <= 400).all() and (j + w <= 600).all()
    area = h * w / (400 * 600)
    assert area.min() >= 0.08 - 0.01 and area.max() <= 0.936 + 0.01
    ratio = w / h
    assert ratio.min() >= 0.75 - 0.02 and ratio.max() <= 4 / 3 + 0.02


def test_distribution_matches_torchvision_random_resized_crop():
    torch.manual_seed(0)
    image = torch.zeros(3, 120, 200)
    reference = np.array([transforms.RandomResizedCrop.get_params(image, (0.08, 0.936), (3 / 4, 4 / 3))
                          for _ in range(4000)], dtype=np.float64)
    ours, _ = sample_crop_boxes(120, 200, 4000, CropParams(), np.random.default_rng(0))
    ref_area = reference[:, 2] * reference[:, 3] / (120 * 200)
    our_area = ours[:, 2] * ours[:, 3] / (120 * 200)
    assert abs(ref_area.mean() - our_area.mean()) < 0.02
    assert abs(np.median(reference[:, 3] / reference[:, 2]) - np.median(ours[:, 3] / ours[:, 2])) < 0.03
    # positions: mean relative centre near the image centre in both
    for axis, size in ((0, 120), (1, 200)):
        ref_centre = (reference[:, axis] + reference[:, axis + 2] / 2) / size
        our_centre = (ours[:, axis] + ours[:, axis + 2] / 2) / size
        assert abs(ref_centre.mean() - our_centre.mean()) < 0.02


def test_central_fallback_when_no_try_fits():
    # scale 1 with a ratio far from the image's never fits: torchvision falls back to the central crop
    params = CropParams(scale=(1.0, 1.0), ratio=(3.0, 4.0))
    boxes, _ = sample_crop_boxes(100, 100, 5, params, np.random.default_rng(0))
    assert boxes.tolist() == [[(100 - 33) // 2, 0, 33, 100]] * 5  # h = round(100 / 3) = 33, w = 100


def test_flip_probability_is_respected():
    _, flips = sample_crops(64, 64, 4000, CropParams(flip_p=0.25), 0, 0)
    assert abs(flips.mean() - 0.25) < 0.03
    assert not sample_crops(64, 64, 100, CropParams(flip_p=0.0), 0, 0)[1].any()


def test_fkd_normalised_convention_and_fp16_round_trip():
    boxes = np.array([[10, 20, 100, 50], [0, 0, 511, 700]])
    coords = normalise_boxes(boxes, 512, 701)
    np.testing.assert_allclose(coords[0], [10 / 512, 20 / 701, 100 / 512, 50 / 701], rtol=1e-6)
    assert np.array_equal(pixel_boxes(coords.astype(np.float16), 512, 701), boxes)


def test_bounding_boxes_are_xyxy_pixels():
    boxes = to_bounding_boxes(normalise_boxes(np.array([[4, 6, 10, 8]]), 32, 40), 32, 40)
    assert boxes.tolist() == [[6, 4, 14, 14]] and tuple(boxes.canvas_size) == (32, 40)


def test_cut_crops_cuts_the_stored_box_and_flips():
    height, width = 12, 16
    image = torch.arange(height * width, dtype=torch.float32).reshape(1, height, width) / (height * width)
    boxes = np.array([[2, 3, 4, 5], [0, 0, 12, 16]])
    coords = normalise_boxes(boxes, height, width)
    crops = cut_crops(image, coords, np.array([False, True]), (4, 5), interpolation="nearest")
    torch.testing.assert_close(crops[0], image[:, 2:6, 3:8])
    expected = F.horizontal_flip(F.resize(image, [4, 5], interpolation=InterpolationMode.NEAREST))
    torch.testing.assert_close(crops[1], expected)


def test_cut_crops_bicubic_matches_transforms_v2_and_stays_in_range():
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    coords, flips = sample_crops(40, 50, 6, CropParams(flip_p=0.0), 0, 0)
    crops = cut_crops(image, coords, flips, 24)
    i, j, h, w = pixel_boxes(coords, 40, 50)[2]
    unclamped = F.resized_crop(F.to_dtype(image, torch.float32, scale=True), int(i), int(j), int(h), int(w),
                               [24, 24], interpolation=InterpolationMode.BICUBIC, antialias=True)
    torch.testing.assert_close(crops[2], unclamped.clamp(0, 1))
    # bicubic overshoots on noise, so the range check below tests the clamp
    assert unclamped.min() < 0 or unclamped.max() > 1
    assert crops.min() >= 0 and crops.max() <= 1


def test_invalid_crop_params_are_rejected():
    with pytest.raises(ValueError, match="scale"):
        CropParams(scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="flip_p"):
        CropParams(flip_p=1.5)


def test_area_fraction():
    assert crop_area_fraction(np.array([[0, 0, 0.5, 0.5]])).tolist() == [0.25]


def _rrc_reference(height, width, num_crops, params, rng):
    """RandomResizedCrop's rule written out crop by crop, drawing with uniform(low, high, size) calls in turn."""
    target = height * width * rng.uniform(params.scale[0], params.scale[1], size=(num_crops, 10))
    log_low, log_high = np.log(params.ratio)
    aspect = np.exp(rng.uniform(log_low, log_high, size=(num_crops, 10)))
    offsets, flip_draws = rng.uniform(size=(num_crops, 2)), rng.uniform(size=num_crops)
    boxes = []
    for n in range(num_crops):
        for t in range(10):
            w, h = int(np.round(np.sqrt(target[n, t] * aspect[n, t]))), int(np.round(np.sqrt(target[n, t] / aspect[n, t])))
            if 0 < w <= width and 0 < h <= height:
                boxes.append([int(offsets[n, 0] * (height - h + 1)), int(offsets[n, 1] * (width - w + 1)), h, w])
                break
        else:
            low, high = min(params.ratio), max(params.ratio)
            if width / height < low:
                h, w = int(round(width / low)), width
            elif width / height > high:
                h, w = height, int(round(height * high))
            else:
                h, w = height, width
            boxes.append([(height - h) // 2, (width - w) // 2, h, w])
    return np.array(boxes), flip_draws < params.flip_p


@pytest.mark.parametrize("seed", range(4))
def test_sampling_equals_a_crop_by_crop_reference(seed):
    rng = np.random.default_rng(seed)
    for trial in range(25):
        height, width = (int(v) for v in rng.integers(1, 400, 2))
        low = float(rng.uniform(0.01, 1.0))
        params = CropParams(scale=(low, float(rng.uniform(low, 1.0))),
                            ratio=(float(rng.uniform(0.2, 1.0)), float(rng.uniform(1.0, 5.0))), flip_p=0.3)
        count = int(rng.integers(1, 40))
        boxes, flips = sample_crop_boxes(height, width, count, params, crop_rng(seed, trial))
        expected_boxes, expected_flips = _rrc_reference(height, width, count, params, crop_rng(seed, trial))
        np.testing.assert_array_equal(boxes, expected_boxes)
        np.testing.assert_array_equal(flips, expected_flips)


def test_many_images_at_once_equal_one_by_one():
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 300, (40, 2))
    sizes[[3, 17]] = 0  # images without labels: no regions
    params = CropParams(scale=(0.2, 0.9), ratio=(0.5, 2.0), flip_p=0.4)
    indices = np.arange(40) + 1000
    coords, flips = sample_crops_many(sizes, 12, params, seed=5, indices=indices)
    assert coords.shape == (40, 12, 4) and coords.dtype == np.float32 and flips.shape == (40, 12)
    for row, (height, width) in enumerate(sizes):
        if row in (3, 17):
            assert not coords[row].any() and not flips[row].any()
            continue
        expected = sample_crops(int(height), int(width), 12, params, seed=5, image_index=int(indices[row]))
        np.testing.assert_array_equal(coords[row], expected[0])
        np.testing.assert_array_equal(flips[row], expected[1])


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_resize_weights_from_the_table_equal_the_direct_computation(interpolation):
    from softlab.data.crops import _weights, resize_weights

    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 29, 300)
    starts = np.array([rng.integers(0, 28 - length + 1) for length in lengths])
    table = resize_weights(starts, lengths, 28, 32, interpolation)  # a 28-px axis: read from the table
    for n in range(0, 300, 37):
        direct = _weights(np.array([[starts[n], lengths[n]]]), 28, 32, interpolation)[0]
        assert torch.equal(table[n], torch.from_numpy(direct))
        # every output pixel's weights sum to 1 over the source pixels inside the box, and are 0 outside it
        inside = np.zeros(28, bool)
        inside[starts[n]:starts[n] + lengths[n]] = True
        assert not table[n][:, ~inside].any()
        torch.testing.assert_close(table[n].sum(1), torch.ones(32), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="boxes must lie inside the axis of 28 pixels"):
        resize_weights([20], [9], 28, 32, interpolation)


def test_a_steps_online_crops_drawn_together_equal_one_draw_per_image():
    from softlab.train.loader import _CROPS, RandomCrops

    source = RandomCrops(CropParams(scale=(0.3, 1.0)), num_crops=5, seed=9)
    images, sizes = [4, 0, 17, 4], [(28, 28), (40, 17), (300, 500), (5, 90)]
    coords, flips, crops = source.draw_many(3, images, sizes)
    assert coords.shape == (4, 5, 4) and flips.shape == (4, 5) and (crops == -1).all()
    for row, (image, (height, width)) in enumerate(zip(images, sizes)):
        boxes, expected_flips = sample_crop_boxes(height, width, 5, CropParams(scale=(0.3, 1.0)),
                                                  np.random.default_rng([9, _CROPS, 3, image]))
        np.testing.assert_array_equal(coords[row], normalise_boxes(boxes, height, width))
        np.testing.assert_array_equal(flips[row], expected_flips)
