"""Pure loss functions of the recipes: tensors in, a scalar (batch mean) out, no state.

Notation: z = student logits, v = teacher logits, y = ground-truth class, q = a target distribution,
p^T = softmax(·/T). Every function averages over the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−Σ_c q_c · log softmax(z)_c (FKD's soft cross-entropy); ``targets`` q ``[B, C]`` rows sum to 1."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """CE against (1 − ε)·onehot(y) + ε/C (label smoothing, Szegedy et al. CVPR 2016; ε = 0 is plain CE)."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)


def kl_divergence(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T² · KL(p_t^T ‖ p_s^T) = T² · Σ_c p_t^T (log p_t^T − log p_s^T) (Hinton et al. 2015's soft term)."""
    log_s = F.log_softmax(logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature ** 2 * (log_t.exp() * (log_t - log_s)).sum(dim=-1).mean()


def hinton_kd(logits, teacher_logits, labels, alpha: float = 0.1, temperature: float = 4.0) -> torch.Tensor:
    """α·CE(z, y) + (1 − α)·T²·KL(p_t^T ‖ p_s^T) ("Distilling the Knowledge in a Neural Network", Hinton 2015)."""
    hard = cross_entropy(logits, labels)
    return alpha * hard + (1 - alpha) * kl_divergence(logits, teacher_logits, temperature)


def non_target_log_softmax(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log of the distribution over the C − 1 non-target classes (renormalised to sum 1) → ``[B, C − 1]``."""
    keep = torch.ones_like(logits, dtype=torch.bool).scatter_(1, labels.view(-1, 1), False)
    rest = logits.float()[keep].view(logits.shape[0], -1)
    return F.log_softmax(rest / temperature, dim=-1)


def nkd(logits, teacher_logits, labels, temperature: float = 1.0, gamma: float = 1.5) -> torch.Tensor:
    """Normalised KD (Yang et al., "From Knowledge Distillation to Self-Knowledge Distillation", ICCV 2023).

    −t_y·log s_y + γ·λ²·KL(T̂^λ ‖ Ŝ^λ), where t_y, s_y are the teacher's and the student's probability of
    the ground truth (t_y is a constant weight) and T̂^λ, Ŝ^λ the non-target distributions at temperature λ,
    each renormalised to sum 1. (The authors' code writes the second term as a cross-entropy; it differs from
    this KL by the teacher's non-target entropy, which has no gradient.) The NKD recipe adds CE(z, y).
    """
    log_s = F.log_softmax(logits.float(), dim=-1).gather(1, labels.view(-1, 1)).squeeze(1)
    t_y = F.softmax(teacher_logits.float(), dim=-1).gather(1, labels.view(-1, 1)).squeeze(1).detach()
    target_term = -(t_y * log_s).mean()
    log_s_rest = non_target_log_softmax(logits, labels, temperature)
    log_t_rest = non_target_log_softmax(teacher_logits, labels, temperature)
    kl = (log_t_rest.exp() * (log_t_rest - log_s_rest)).sum(dim=-1).mean()
    return target_term + gamma * temperature ** 2 * kl


def pskd_targets(labels: torch.Tensor, previous: torch.Tensor, alpha: float) -> torch.Tensor:
    """PS-KD target (1 − α_t)·onehot(y) + α_t·p_prev (Kim et al., "Self-Knowledge Distillation with
    Progressive Refinement of Targets", ICCV 2021); ``previous`` ``[B, C]`` is the student's past prediction."""
    onehot = F.one_hot(labels, previous.shape[-1]).to(previous.dtype)
    return (1 - alpha) * onehot + alpha * previous


def pskd_alpha(epoch: int, epochs: int, alpha_final: float = 0.8) -> float:
    """α_t = α_T · (t + 1) / T for 0-based epoch t (grows linearly to α_T in the last epoch, as in PS-KD's code)."""
    return alpha_final * (epoch + 1) / epochs


def temper(targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Label temperature τ: q_c^(1/τ) / Σ_k q_k^(1/τ) (τ > 1 softens, τ < 1 sharpens, τ = 1 leaves q as is)."""
    if temperature == 1.0:
        return targets
    powered = targets.clamp_min(0).pow(1.0 / temperature)
    return powered / powered.sum(dim=-1, keepdim=True).clamp_min(1e-12)
