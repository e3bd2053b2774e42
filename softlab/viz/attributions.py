"""captum attributions of a teacher on one crop (Integrated Gradients, Grad-CAM, Occlusion) and their overlays.

The teacher's forward takes ``[0, 1]`` images at ``teacher.input_size`` and normalises them itself, so every
attribution is with respect to the ``[0, 1]`` crop the teacher labelled. The target defaults to the image's
ground-truth class.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import nn
from torch.nn import functional as F

from ..data.crops import cut_crops
from ..labels.store import LabelStore
from .crops import image_title
from .images import image_trace, short_name, style_subplot_image_axes

ATTRIBUTION_METHODS = ("integrated_gradients", "grad_cam", "occlusion")
METHOD_TITLES = {"integrated_gradients": "Integrated Gradients", "grad_cam": "Grad-CAM", "occlusion": "Occlusion"}


def teacher_crop(image, store: LabelStore, index: int, crop: int, teacher) -> torch.Tensor:
    """float ``[1, C, H, W]`` in [0, 1]: one stored crop cut at the teacher's input size, as it was labelled."""
    coords, flips = store.crops(index)
    interpolation = store.manifest["crops"].get("interpolation", "bicubic")
    size = tuple(teacher.input_size[1:])
    return cut_crops(image, coords[crop:crop + 1], np.array(flips[crop:crop + 1]), size, interpolation)


def last_feature_layer(model: nn.Module, input_size) -> nn.Module:
    """The module that last outputs a spatial feature map (4-D, larger than 1×1) in a forward pass.

    For timm EfficientNets this is ``bn2`` (conv_head's normalisation + activation), for ResNets ``layer4``:
    the last conv stage that Grad-CAM reads.
    """
    found: list[nn.Module] = []
    hooks = [module.register_forward_hook(lambda module, _, output: found.append(module)
                                          if _is_feature_map(output) else None)
             for module in model.modules() if module is not model]
    try:
        with torch.no_grad():
            parameter = next(model.parameters(), None)
            model(torch.zeros(1, *input_size, device=parameter.device if parameter is not None else "cpu"))
    finally:
        for hook in hooks:
            hook.remove()
    if not found:
        raise ValueError("the model produces no spatial feature map: pass a layer for Grad-CAM explicitly")
    return found[-1]


def _is_feature_map(output) -> bool:
    return isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-1] * output.shape[-2] > 1


def integrated_gradients(teacher, crop: torch.Tensor, target: int, steps: int = 32,
                         baseline: torch.Tensor | float = 0.0) -> tuple[torch.Tensor, float]:
    """IG attributions ``[1, C, H, W]`` of the target logit and the completeness gap (Σ attr − (f(x) − f(b)))."""
    from captum.attr import IntegratedGradients

    method = IntegratedGradients(teacher)
    attributions, delta = method.attribute(crop, baselines=baseline, target=int(target), n_steps=int(steps),
                                           internal_batch_size=min(int(steps), 16), return_convergence_delta=True)
    return attributions.detach(), float(delta.abs().max())


def grad_cam(teacher, crop: torch.Tensor, target: int, layer: nn.Module | None = None) -> torch.Tensor:
    """Grad-CAM ``[1, 1, H, W]`` on ``layer`` (default :func:`last_feature_layer`), ReLU'd, upsampled bilinearly."""
    from captum.attr import LayerAttribution, LayerGradCam

    layer = layer or last_feature_layer(teacher.model, teacher.input_size)
    cam = LayerGradCam(teacher, layer).attribute(crop, target=int(target), relu_attributions=True)
    return LayerAttribution.interpolate(cam.detach(), tuple(crop.shape[-2:]), interpolate_mode="bilinear")


def occlusion(teacher, crop: torch.Tensor, target: int, window: int | None = None, stride: int | None = None,
              baseline: float = 0.5, batch: int = 32) -> torch.Tensor:
    """Occlusion ``[1, C, H, W]``: drop of the target logit when a grey ``window``² patch covers each pixel.

    The window defaults to 1/7 of the crop side, the stride to half the window.
    """
    from captum.attr import Occlusion

    window = window or max(2, math.ceil(crop.shape[-1] / 7))
    stride = stride or max(1, window // 2)
    channels = crop.shape[1]
    return Occlusion(teacher).attribute(crop, sliding_window_shapes=(channels, window, window),
                                        strides=(channels, stride, stride), baselines=baseline,
                                        target=int(target), perturbations_per_eval=batch).detach()


def integrated_gradients_magnitude(attributions: torch.Tensor, blur: int = 5) -> torch.Tensor:
    """``[1, 1, H, W]``: |IG| summed over channels, box-blurred over ``blur`` pixels (pixel-level IG is speckled)."""
    magnitude = attributions.abs().sum(dim=1, keepdim=True)
    if blur <= 1:
        return magnitude
    return F.avg_pool2d(magnitude, blur, stride=1, padding=blur // 2, count_include_pad=False)


def attribution_maps(teacher, crop: torch.Tensor, target: int, methods=ATTRIBUTION_METHODS, ig_steps: int = 32,
                     layer: nn.Module | None = None, occlusion_window: int | None = None) -> dict:
    """``{method: float32 [H, W]}`` for the chosen methods.

    Integrated Gradients: :func:`integrated_gradients_magnitude` (unsigned); Grad-CAM: as computed (≥ 0);
    Occlusion: summed over channels (signed: positive where hiding the patch lowers the target logit).
    """
    compute = {
        "integrated_gradients": lambda: integrated_gradients_magnitude(
            integrated_gradients(teacher, crop, target, ig_steps)[0]),
        "grad_cam": lambda: grad_cam(teacher, crop, target, layer),
        "occlusion": lambda: occlusion(teacher, crop, target, occlusion_window),
    }
    unknown = set(methods) - set(compute)
    if unknown:
        raise ValueError(f"unknown attribution methods {sorted(unknown)}; use {', '.join(ATTRIBUTION_METHODS)}")
    return {name: compute[name]()[0].sum(dim=0).float().cpu().numpy() for name in methods}


def attribution_heatmap(values: np.ndarray, method: str, opacity: float) -> go.Heatmap:
    """An attribution map as a heatmap over its crop: unsigned maps run from 0, signed maps diverge around 0."""
    scale = float(np.quantile(np.abs(values), 0.99)) or 1.0
    if method in ("grad_cam", "integrated_gradients"):
        style = dict(colorscale="Inferno", zmin=0, zmax=scale)
    else:
        style = dict(colorscale="RdBu_r", zmid=0, zmin=-scale, zmax=scale)
    return go.Heatmap(z=values, x0=0.5, dx=1, y0=0.5, dy=1, opacity=opacity, showscale=False, name=method,
                      hovertemplate="%{z:.4f}<extra>" + METHOD_TITLES.get(method, method) + "</extra>", **style)


def attribution_figure(crop: torch.Tensor, maps: dict, title: str = "", opacity: float = 0.6) -> go.Figure:
    """The crop, then one overlay per attribution map (bright = important; occlusion: red for, blue against)."""
    pixels = crop[0] if crop.ndim == 4 else crop
    height, width = pixels.shape[-2:]
    titles = ["crop"] + [METHOD_TITLES.get(name, name) for name in maps]
    figure = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.02)
    figure.add_trace(image_trace(pixels), row=1, col=1)
    for column, (name, values) in enumerate(maps.items(), start=2):
        figure.add_trace(image_trace(pixels), row=1, col=column)
        figure.add_trace(attribution_heatmap(values, name, opacity), row=1, col=column)
    for column in range(1, len(titles) + 1):
        style_subplot_image_axes(figure, height, width, row=1, col=column)
    figure.update_layout(title=title, height=360, width=max(600, 300 * len(titles)), showlegend=False,
                         margin=dict(l=10, r=10, t=80, b=10))
    return figure


def crop_attribution_figure(teacher, image, store: LabelStore, index: int, crop: int, target: int | None = None,
                            methods=ATTRIBUTION_METHODS, ig_steps: int = 32, opacity: float = 0.6) -> go.Figure:
    """Attributions of ``teacher`` on one stored crop of image ``index``, for ``target`` (default: ground truth)."""
    pixels = teacher_crop(image, store, index, crop, teacher)
    target = int(store.targets[index]) if target is None else int(target)
    maps = attribution_maps(teacher, pixels, target, methods, ig_steps)
    with torch.no_grad():
        probability = float(torch.softmax(teacher(pixels).float(), dim=-1)[0, target])
    title = (f"{image_title(store, index)}, crop {crop}: attributions for {short_name(teacher.class_names[target])} "
             f"(p = {probability:.3f})")
    return attribution_figure(pixels, maps, title, opacity)
