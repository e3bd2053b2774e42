import numpy as np
import pytest
import torch

from softlab.labels.quantize import dense_labels, entropy, parse_label_type, quantize

# fp16-exact probabilities, given in a shuffled class order so that indices matter.
P = torch.tensor([[0.0625, 0.25, 0.0625, 0.5, 0.125]])
C = 5


def recover(label_type):
    indices, values = quantize(P, label_type)
    return dense_labels(indices, values, label_type, C)


def test_hard_is_one_hot_at_argmax():
    assert recover("hard").tolist() == [[0, 0, 0, 1, 0]]


def test_smoothing_shares_the_rest_evenly():
    # p_max = 0.5 at class 3; (1 - 0.5) / 4 = 0.125 elsewhere
    assert recover("smoothing").tolist() == [[0.125, 0.125, 0.125, 0.5, 0.125]]


def test_marginal_smoothing_k2():
    # top-2: class 3 (0.5), class 1 (0.25); rest (1 - 0.75) / 3 each
    expected = torch.tensor([[0.25 / 3, 0.25, 0.25 / 3, 0.5, 0.25 / 3]])
    torch.testing.assert_close(recover("marginal_smoothing_k2"), expected, rtol=0, atol=1e-7)


def test_marginal_renorm_k3():
    # top-3: 0.5, 0.25, 0.125 → divided by 0.875
    expected = torch.tensor([[0, 0.25 / 0.875, 0, 0.5 / 0.875, 0.125 / 0.875]])
    torch.testing.assert_close(recover("marginal_renorm_k3"), expected, rtol=0, atol=1e-7)


def test_full_keeps_all_probabilities():
    assert recover("full").tolist() == P.tolist()


def test_quantize_stores_sorted_top_k_in_fp16():
    indices, values = quantize(P, "marginal_smoothing_k3")
    assert indices.tolist() == [[3, 1, 4]]
    assert values.dtype == torch.float16 and values.tolist() == [[0.5, 0.25, 0.125]]


def _loop_reference(p, kind, k):
    """Independent per-element implementation of DESIGN.md's formulas (in float64 on fp16-rounded values)."""
    p = p.astype(np.float64)
    order = np.argsort(-p, kind="stable")[:k]
    kept = p[order].astype(np.float16).astype(np.float64)
    out = np.zeros_like(p)
    if kind == "hard":
        out[order[0]] = 1
    elif kind == "smoothing":
        out[:] = (1 - kept[0]) / (len(p) - 1)
        out[order[0]] = kept[0]
    elif kind == "marginal_smoothing":
        out[:] = max(1 - kept.sum(), 0) / (len(p) - k)
        out[order] = kept
    else:
        out[order] = kept / kept.sum()
    return out


@pytest.mark.parametrize("label_type,kind,k", [("hard", "hard", 1), ("smoothing", "smoothing", 1),
                                               ("marginal_smoothing_k5", "marginal_smoothing", 5),
                                               ("marginal_renorm_k4", "marginal_renorm", 4),
                                               ("marginal_smoothing_k1", "marginal_smoothing", 1)])
def test_dense_recovery_matches_reference_on_random_distributions(label_type, kind, k):
    generator = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(50, 17, generator=generator) * 3, dim=1)
    indices, values = quantize(probs, label_type)
    dense = dense_labels(indices, values, label_type, 17).double().numpy()
    expected = np.stack([_loop_reference(row, kind, k) for row in probs.numpy()])
    np.testing.assert_allclose(dense, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(dense.sum(axis=1), 1.0, atol=1e-5)


def test_parse_label_type_names_and_errors():
    assert parse_label_type("marginal_smoothing_k5").k == 5
    assert parse_label_type("marginal_renorm").name == "marginal_renorm_k5"  # FKD's spelling
    assert parse_label_type("full").stored_k(10) == 10
    with pytest.raises(ValueError, match="unknown label type"):
        parse_label_type("soft")
    with pytest.raises(ValueError, match="k must be at least 1"):
        parse_label_type("marginal_smoothing_k0")
    with pytest.raises(ValueError, match="k < number of classes"):
        quantize(P, "marginal_smoothing_k5")


def test_entropy_in_nats():
    # H = -(0.5 ln 0.5 + 0.25 ln 0.25 + 0.125 ln 0.125 + 2 * 0.0625 ln 0.0625)
    expected = -(0.5 * np.log(0.5) + 0.25 * np.log(0.25) + 0.125 * np.log(0.125) + 2 * 0.0625 * np.log(0.0625))
    assert entropy(P).item() == pytest.approx(expected, abs=1e-6)
    assert entropy(torch.tensor([[1.0, 0.0]])).item() == 0.0
