"""Loss functions against values computed by hand (scalar math, independent of torch)."""
import math

import pytest
import torch

from softlab.train import losses
from softlab.train.recipes import RECIPES, describe_recipe

LN = math.log


def close(value, expected):
    assert float(value) == pytest.approx(expected, abs=1e-6)


def test_soft_cross_entropy():
    # z = (0, 0): log softmax = (−ln 2, −ln 2); any q summing to 1 gives ln 2
    close(losses.soft_cross_entropy(torch.zeros(1, 2), torch.tensor([[0.25, 0.75]])), LN(2))
    # z = (0, ln 3): softmax (1/4, 3/4); q = (1/2, 1/2) → −(½ ln ¼ + ½ ln ¾)
    z = torch.tensor([[0.0, LN(3)]])
    close(losses.soft_cross_entropy(z, torch.tensor([[0.5, 0.5]])), -(0.5 * LN(0.25) + 0.5 * LN(0.75)))


def test_soft_cross_entropy_averages_over_the_batch():
    z = torch.tensor([[0.0, LN(3)], [0.0, 0.0]])
    q = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    close(losses.soft_cross_entropy(z, q), (-LN(0.75) + LN(2)) / 2)


def test_cross_entropy_and_label_smoothing():
    z, y = torch.tensor([[0.0, LN(3)]]), torch.tensor([1])
    close(losses.cross_entropy(z, y), -LN(0.75))
    # ε = 0.2, C = 2: q = (0.1, 0.9)
    close(losses.cross_entropy(z, y, smoothing=0.2), -(0.1 * LN(0.25) + 0.9 * LN(0.75)))


def test_kl_divergence_with_temperature():
    student, teacher = torch.zeros(1, 2), torch.tensor([[0.0, LN(3)]])
    close(losses.kl_divergence(student, teacher, 1.0), 0.25 * LN(0.25 / 0.5) + 0.75 * LN(0.75 / 0.5))
    # T = 2: p_t = softmax(0, ln3 / 2) = (1, √3) / (1 + √3); p_s stays uniform; times T² = 4
    a, b = 1 / (1 + math.sqrt(3)), math.sqrt(3) / (1 + math.sqrt(3))
    close(losses.kl_divergence(student, teacher, 2.0), 4 * (a * LN(a / 0.5) + b * LN(b / 0.5)))
    close(losses.kl_divergence(teacher, teacher, 3.0), 0.0)


def test_hinton_kd_weights_ce_and_kl():
    student, teacher, y = torch.zeros(1, 2), torch.tensor([[0.0, LN(3)]]), torch.tensor([0])
    kl = 0.25 * LN(0.5) + 0.75 * LN(1.5)
    close(losses.hinton_kd(student, teacher, y, alpha=0.3, temperature=1.0), 0.3 * LN(2) + 0.7 * kl)


def test_nkd_target_and_non_target_terms():
    y = torch.tensor([0])
    # uniform student; teacher (½, ¼, ¼): non-target parts both uniform → only −t_y·log s_y = ½ ln 3
    close(losses.nkd(torch.zeros(1, 3), torch.tensor([[LN(2), 0.0, 0.0]]), y), 0.5 * LN(3))
    # teacher (0.2, 0.6, 0.2): t_y = 0.2, non-target teacher (¾, ¼) vs student (½, ½); γ = 1.5, λ = 1
    kl = 0.75 * LN(1.5) + 0.25 * LN(0.5)
    close(losses.nkd(torch.zeros(1, 3), torch.tensor([[0.0, LN(3), 0.0]]), y, gamma=1.5), 0.2 * LN(3) + 1.5 * kl)


def test_nkd_temperature_scales_the_non_target_term():
    y = torch.tensor([0])
    teacher = torch.tensor([[0.0, LN(9), 0.0]])  # non-target logits (ln 9, 0) at λ = 2 → (3, 1) / 4
    t_y = 1 / 11
    kl = 0.75 * LN(0.75 / 0.5) + 0.25 * LN(0.25 / 0.5)
    close(losses.nkd(torch.zeros(1, 3), teacher, y, temperature=2.0, gamma=1.0), t_y * LN(3) + 4 * kl)


def test_non_target_distribution_sums_to_one():
    logits = torch.randn(4, 6)
    labels = torch.tensor([0, 5, 2, 2])
    assert torch.allclose(losses.non_target_log_softmax(logits, labels).exp().sum(-1), torch.ones(4))


def test_pskd_targets_and_alpha():
    previous = torch.tensor([[0.2, 0.5, 0.3]])
    targets = losses.pskd_targets(torch.tensor([1]), previous, alpha=0.4)
    torch.testing.assert_close(targets, torch.tensor([[0.08, 0.8, 0.12]]))
    assert losses.pskd_alpha(0, 4, 0.8) == pytest.approx(0.2)
    assert losses.pskd_alpha(3, 4, 0.8) == pytest.approx(0.8)


def test_label_temperature():
    q = torch.tensor([[0.2, 0.8]])
    torch.testing.assert_close(losses.temper(q, 0.5), torch.tensor([[0.04 / 0.68, 0.64 / 0.68]]))
    assert losses.temper(q, 1.0) is q
    flat = losses.temper(q, 1e6)
    torch.testing.assert_close(flat, torch.full((1, 2), 0.5), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_documents_its_formula_and_paper(name):
    info = describe_recipe(name)
    assert "=" in info["doc"] or "−log" in info["doc"] or "cross-entropy" in info["doc"].lower()
    if name not in ("hard",):
        assert any(str(year) in info["doc"] for year in range(2015, 2025)), f"{name}: no paper/year in docstring"
