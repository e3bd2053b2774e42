"""Teachers from timm and torchvision: hub weights when online, local checkpoints always.

Offline, huggingface_hub retries a failing download with back-off for about 45 s per file (its
``HF_HUB_ETAG_TIMEOUT``/``HF_HUB_DOWNLOAD_TIMEOUT`` of 10 s do not shorten that, since name resolution fails at
once). So the download host is probed first (a 3 s TCP connect, through the configured proxy if any); when it
cannot be reached, only already-cached weights are used and a :class:`TeacherUnavailableError` is raised at once.
"""
from __future__ import annotations

import difflib
import os
import socket
import threading
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from torch import nn

from .base import Teacher, TeacherUnavailableError, fit_stats, load_checkpoint

PROBE_TIMEOUT_S = 3.0


def timm_teacher(name: str, weights: str | None = None) -> Teacher:
    """``timm:<name>``: timm's pretrained weights, or ``weights`` (a local checkpoint) on the bare architecture."""
    _check_timm_name(name)
    if weights is not None:
        model, meta = _timm_from_file(name, weights)
    else:
        model, meta = _timm_pretrained(name), {}
    return teacher_from_timm_model(model, f"timm:{name}", meta, weights_path=weights)


def teacher_from_timm_model(model: nn.Module, spec: str, meta: dict | None = None, weights_path=None) -> Teacher:
    """Wrap a timm model; input size, mean/std and interpolation come from ``meta`` else its pretrained_cfg."""
    from timm.data import resolve_model_data_config

    meta = meta or {}
    config = resolve_model_data_config(model)
    num_classes = int(meta.get("num_classes") or model.num_classes)
    in_chans = int(meta.get("in_chans") or _first_conv_channels(model) or config["input_size"][0])
    interpolation = meta.get("interpolation") or config.get("interpolation")
    return Teacher(
        model, spec=spec,
        input_size=meta.get("input_size") or (in_chans, *config["input_size"][1:]),
        mean=meta.get("mean") or fit_stats(config["mean"], in_chans),
        std=meta.get("std") or fit_stats(config["std"], in_chans),
        interpolation=interpolation if interpolation in ("bicubic", "bilinear") else "bicubic",
        class_names=meta.get("class_names") or timm_class_names(model, num_classes),
        weights_path=weights_path, accuracy=meta.get("accuracy"),
    )


def timm_class_names(model: nn.Module, num_classes: int) -> list[str]:
    """ImageNet(-1k/-21k/…) descriptions when the model's classes are an ImageNet subset, else "0", "1", …."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    if num_classes == 1000:
        from softlab.data import imagenet_class_names

        return imagenet_class_names()
    subset = infer_imagenet_subset(model) if num_classes > 1000 else None
    if subset:
        info = ImageNetInfo(subset)
        if info.num_classes() == num_classes:
            return [info.index_to_description(i) for i in range(num_classes)]
    return [str(i) for i in range(num_classes)]


def _check_timm_name(name: str) -> None:
    import timm

    if name.startswith("hf-hub:") or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f" Close matches: {', '.join(close)}." if close else " See timm.list_models()."
    from .registry import TeacherSpecError

    raise TeacherSpecError(f"timm has no model named {name!r}.{hint}")


def _timm_pretrained(name: str) -> nn.Module:
    import timm
    from timm.models import get_pretrained_cfg

    cfg = None if name.startswith("hf-hub:") else get_pretrained_cfg(name)
    if cfg is not None and not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise TeacherUnavailableError(f"timm publishes no pretrained weights for {name!r}. " + _advice("timm", name))
    source = _timm_source(name, cfg)
    try:
        with _download_guard(source, "timm", name):
            return timm.create_model(name, pretrained=True)
    except TeacherUnavailableError:
        raise
    except Exception as exc:  # hub, HTTP and file errors all mean the same thing to the user
        raise TeacherUnavailableError(f"could not fetch the pretrained weights for timm:{name} ({_short(exc)}). "
                                      + _advice("timm", name)) from exc


def _timm_source(name: str, cfg) -> str:
    """The URL that timm will download from: the Hugging Face hub when it can, else the cfg's url."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return cfg.url if cfg is not None else ""
    if name.startswith("hf-hub:") or (cfg is not None and cfg.hf_hub_id):
        return "hf:" + constants.ENDPOINT
    return cfg.url if cfg is not None else ""


def _timm_from_file(name: str, path: str) -> tuple[nn.Module, dict]:
    import timm
    from timm.models import get_pretrained_cfg

    state, meta = load_checkpoint(path)
    cfg = None if name.startswith("hf-hub:") else get_pretrained_cfg(name)
    sizes = {"num_classes": meta.get("num_classes") or _dim(state, cfg and cfg.classifier, 0),
             "in_chans": meta.get("in_chans") or _dim(state, cfg and cfg.first_conv, 1)}
    model = timm.create_model(name, pretrained=False, **{k: int(v) for k, v in sizes.items() if v})
    load_strict(model, state, path, f"timm:{name}")
    return model, meta


def _dim(state: dict, module_name, axis: int) -> int | None:
    """Size of ``axis`` of ``<module_name>.weight`` in ``state`` (classifier outputs, first-conv inputs)."""
    if isinstance(module_name, (tuple, list)):
        module_name = module_name[0] if module_name else None
    weight = state.get(f"{module_name}.weight") if module_name else None
    return int(weight.shape[axis]) if weight is not None and weight.ndim > axis else None


def _first_conv_channels(model: nn.Module) -> int | None:
    first = model.pretrained_cfg.get("first_conv") if hasattr(model, "pretrained_cfg") else None
    return _dim(dict(model.state_dict()), first, 1)


def load_strict(model: nn.Module, state: dict, path, spec: str) -> None:
    """``model.load_state_dict(state)`` with a message naming the file and the architecture on mismatch."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = str(exc).splitlines()
        raise TeacherUnavailableError(f"the weights in {path} do not fit {spec}: "
                                      f"{' '.join(line.strip() for line in detail[:3])[:400]}") from exc


def torchvision_teacher(name: str, weights: str | None = None) -> Teacher:
    """``torchvision:<name>``: its DEFAULT weights (downloaded), or ``weights`` on the bare architecture."""
    from torchvision import models

    default = _torchvision_default_weights(name)
    preset = default.transforms()
    if not hasattr(preset, "crop_size"):
        from .registry import TeacherSpecError

        raise TeacherSpecError(f"torchvision:{name} is not an image classifier")
    meta: dict = {}
    if weights is not None:
        state, meta = load_checkpoint(weights)
        num_classes = int(meta.get("num_classes") or _last_linear_outputs(state) or len(default.meta["categories"]))
        model = models.get_model(name, weights=None, num_classes=num_classes)
        load_strict(model, state, weights, f"torchvision:{name}")
    else:
        try:
            with _download_guard(default.url, "torchvision", name):
                model = models.get_model(name, weights="DEFAULT")
        except TeacherUnavailableError:
            raise
        except Exception as exc:
            raise TeacherUnavailableError(f"could not fetch the pretrained weights for torchvision:{name} "
                                          f"({_short(exc)}). " + _advice("torchvision", name)) from exc
        num_classes = len(default.meta["categories"])
    categories = default.meta["categories"]
    crop = int(preset.crop_size[0])
    return Teacher(
        model, spec=f"torchvision:{name}", input_size=meta.get("input_size") or (3, crop, crop),
        mean=meta.get("mean") or preset.mean, std=meta.get("std") or preset.std,
        interpolation="bicubic" if "bicubic" in str(preset.interpolation).lower() else "bilinear",
        class_names=meta.get("class_names") or (categories if len(categories) == num_classes
                                                else [str(i) for i in range(num_classes)]),
        weights_path=weights, accuracy=meta.get("accuracy"),
    )


def _torchvision_default_weights(name: str):
    from torchvision import models

    try:
        return models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError) as exc:
        from .registry import TeacherSpecError

        close = difflib.get_close_matches(name, models.list_models(), n=3)
        hint = f" Close matches: {', '.join(close)}." if close else " See torchvision.models.list_models()."
        raise TeacherSpecError(f"torchvision has no model with weights named {name!r}.{hint}") from exc


def _last_linear_outputs(state: dict) -> int | None:
    weights = [v for k, v in state.items() if k.endswith(".weight") and v.ndim == 2]
    return int(weights[-1].shape[0]) if weights else None


def _advice(scheme: str, name: str) -> str:
    return (f"This machine may be offline. Supply the weights yourself: create_teacher('{scheme}:{name}', "
            f"weights='path.pth') (CLI: --teacher {scheme}:{name} --teacher-weights path.pth) or the spec "
            f"'file:PATH@{scheme}:{name}'. Offline teachers that always work: efficientnet_lite0, fashion_mnist_cnn.")


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


@contextmanager
def _download_guard(source: str, scheme: str, name: str):
    """Run a hub download only if its host answers; otherwise use cached files or fail at once."""
    if not source or source.startswith("file:") or _reachable(source.removeprefix("hf:")):
        yield
        return
    if source.startswith("hf:"):
        with _hf_offline():
            yield
        return
    cached = Path(_torch_hub_dir()) / "checkpoints" / os.path.basename(urlsplit(source).path)
    if not cached.is_file():
        raise TeacherUnavailableError(f"cannot reach {urlsplit(source).netloc} to download the weights for "
                                      f"{scheme}:{name}, and they are not cached. " + _advice(scheme, name))
    yield


@contextmanager
def _hf_offline():
    """huggingface_hub's offline mode (cache only, no retries) for the duration of the block."""
    from huggingface_hub import constants

    old, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _torch_hub_dir() -> str:
    import torch.hub

    return torch.hub.get_dir()


def _reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the URL's host (or its proxy) opens within ``timeout`` seconds."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return True
    result: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=connect, daemon=True)  # name resolution ignores socket timeouts
    worker.start()
    worker.join(timeout + 0.5)
    return bool(result and result[0])
