"""SelfMix and cross-image Mixup/CutMix: partners, boxes, λ and labels."""
import numpy as np
import pytest
import torch
from timm.data.mixup import mixup_target

from softlab.train.mixing import (Mixing, box_masks, cross_partners, cutmix_boxes, mix, mix_targets, plan_mix,
                                  selfmix_partners, smoothed_one_hot)


def constant_images(count, size=8):
    """Sample n is filled with the value n + 1 (so every pixel says where it came from)."""
    return torch.arange(1, count + 1, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, size, size).clone()


def test_selfmix_partners_stay_within_the_image():
    images = np.array([5, 5, 5, 7, 7, 9])
    assert selfmix_partners(images).tolist() == [1, 2, 0, 4, 3, 5]
    assert cross_partners(4).tolist() == [3, 2, 1, 0]


def test_selfmix_mixup_blends_two_crops_of_the_same_image():
    image_of = np.repeat([3, 8], 4)
    images, labels = constant_images(8), torch.eye(8)
    mixing = Mixing("selfmix", mixup_alpha=0.4, cutmix_alpha=0.0, prob=1.0)
    mixed, targets, plan = mix(images, labels, image_of, mixing, np.random.default_rng(0))
    assert (image_of[plan.partner] == image_of).all() and (plan.partner != np.arange(8)).all()
    lam = torch.tensor(plan.lam, dtype=torch.float32)
    own, other = torch.arange(1.0, 9.0), torch.tensor(plan.partner + 1, dtype=torch.float32)
    torch.testing.assert_close(mixed[:, 0, 0, 0], lam * own + (1 - lam) * other)
    expected = lam[:, None] * labels + (1 - lam[:, None]) * labels[torch.as_tensor(plan.partner)]
    torch.testing.assert_close(targets, expected)
    assert not plan.cutmix.any() and (plan.lam < 1).all()


def test_selfmix_cutmix_lambda_is_the_kept_area_share():
    image_of = np.repeat(np.arange(6), 2)
    images, labels = constant_images(12, size=10), torch.eye(12)
    mixing = Mixing("selfmix", mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0)
    mixed, targets, plan = mix(images, labels, image_of, mixing, np.random.default_rng(3))
    assert plan.cutmix.all()
    for n in range(12):
        own = (mixed[n] == n + 1).float().mean().item()
        pasted = (mixed[n] == plan.partner[n] + 1).float().mean().item()
        assert own == pytest.approx(plan.lam[n]) and own + pasted == pytest.approx(1.0)
        i, j, h, w = plan.boxes[n]
        assert (mixed[n, 0, i:i + h, j:j + w] == plan.partner[n] + 1).all()
        assert targets[n, n] == pytest.approx(plan.lam[n]) and targets[n, plan.partner[n]] == pytest.approx(1 - plan.lam[n])


def test_cutmix_boxes_follow_timm_rand_bbox():
    lam = np.array([0.75, 0.0, 1.0])
    boxes, kept = cutmix_boxes(lam, 16, 16, np.random.default_rng(0))
    assert ((boxes[:, :2] >= 0) & (boxes[:, :2] + boxes[:, 2:] <= 16)).all()
    assert (boxes[2, 2:] == 0).all() and kept[2] == 1.0            # λ = 1: empty box
    assert boxes[0, 2] <= 8 and boxes[0, 3] <= 8                    # side sqrt(1 − 0.75) · 16 = 8, clipped
    np.testing.assert_allclose(kept, 1 - boxes[:, 2] * boxes[:, 3] / 256)


def test_box_masks():
    mask = box_masks(np.array([[1, 2, 2, 3]]), 4, 6)
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[1:3, 2:5] = True
    assert torch.equal(mask[0, 0], expected)


def test_cross_image_labels_are_mixed_as_timm_mixup_target():
    labels = torch.tensor([0, 3, 1, 2, 2])
    for smoothing in (0.0, 0.1):
        ours = mix_targets(smoothed_one_hot(labels, 4, smoothing), cross_partners(5), 0.7)
        torch.testing.assert_close(ours, mixup_target(labels, 4, lam=0.7, smoothing=smoothing))


def test_probability_zero_or_mode_none_changes_nothing():
    images, labels = constant_images(6), torch.eye(6)
    for mixing in (Mixing("selfmix", prob=0.0), Mixing("none")):
        mixed, targets, plan = mix(images, labels, np.repeat([0, 1, 2], 2), mixing, np.random.default_rng(0))
        assert torch.equal(mixed, images) and torch.equal(targets, labels) and (plan.lam == 1).all()


def test_an_image_with_one_crop_is_not_mixed_with_itself():
    plan = plan_mix(Mixing("selfmix", prob=1.0), np.array([0, 0, 1]), 8, 8, np.random.default_rng(0))
    assert plan.lam[2] == 1.0 and plan.partner[2] == 2


def test_plans_are_a_function_of_the_generator_state():
    args = (Mixing("selfmix", prob=0.5), np.repeat(np.arange(8), 4), 28, 28)
    a, b = plan_mix(*args, np.random.default_rng(7)), plan_mix(*args, np.random.default_rng(7))
    assert np.array_equal(a.lam, b.lam) and np.array_equal(a.boxes, b.boxes) and np.array_equal(a.partner, b.partner)
    assert 0 < (a.lam < 1).mean() < 1  # prob 0.5 mixes some, not all


@pytest.mark.parametrize("settings", [dict(mode="blend"), dict(mode="selfmix", mixup_alpha=0, cutmix_alpha=0),
                                      dict(prob=1.5), dict(mixup_alpha=-1)])
def test_invalid_mixing_settings(settings):
    with pytest.raises(ValueError):
        Mixing(**settings)
