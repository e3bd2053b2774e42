"""Named teacher factories and :func:`create_teacher`, which turns a spec string into a :class:`Teacher`.

Spec grammar::

    <name>                          a registered teacher (see list_teachers())
    timm:<model name>               timm pretrained weights (hub; online)
    torchvision:<model name>        torchvision DEFAULT weights (download; online)
    file:<path>[@<arch spec>]       a local checkpoint for <arch spec> (a name, timm:…, torchvision:…);
                                    "@…" may be left out for checkpoints written by softlab
    ensemble:<spec>+<spec>[+…]      MEAL V2 style mean of the members' softmaxes
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Callable

from .base import Teacher, TeacherUnavailableError, load_checkpoint

_FACTORIES: dict[str, Callable[..., Teacher]] = {}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SCHEMES = ("timm", "torchvision", "file", "ensemble")


class TeacherSpecError(ValueError):
    """A teacher spec string is malformed or names no known teacher."""


def register_teacher(name: str):
    """Decorator registering ``fn(**kwargs) -> Teacher`` as the teacher ``name``.

    Factories that accept a ``weights`` keyword can also be used as ``file:<path>@<name>``.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"teacher names use letters, digits, '_', '.', '-' (no ':', '+', '@'); got {name!r}")

    def decorator(fn: Callable[..., Teacher]) -> Callable[..., Teacher]:
        old = _FACTORIES.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"teacher {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        _FACTORIES[name] = fn
        return fn

    return decorator


def list_teachers() -> list[str]:
    """Names of the registered teachers (sorted); timm:/torchvision:/file:/ensemble: specs work as well."""
    return sorted(_FACTORIES)


def create_teacher(spec, weights: str | None = None, device=None, **kwargs) -> Teacher:
    """Build the teacher described by ``spec`` (see the module docstring for the grammar).

    ``weights`` is a local checkpoint for the architecture (same as ``file:<weights>@<spec>``). Extra keyword
    arguments go to a registered factory. ``device`` moves the result there. A ready :class:`Teacher` is returned
    as is. Raises :class:`TeacherSpecError` for bad specs and :class:`TeacherUnavailableError` when the weights
    cannot be had on this machine.
    """
    if isinstance(spec, Teacher):
        if weights is not None or kwargs:
            raise TeacherSpecError("weights/keyword arguments cannot be applied to an already built Teacher")
        teacher = spec
    else:
        if not isinstance(spec, str):
            raise TeacherSpecError(f"a teacher spec is a string, got {type(spec).__name__}")
        teacher = _build(spec.strip(), _weights_path(weights), kwargs)
    return teacher.to(device) if device is not None else teacher


def _weights_path(weights) -> str | None:
    if weights is None:
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise TeacherUnavailableError(f"teacher weights file {path} does not exist")
    return str(path.resolve())


def _build(spec: str, weights: str | None, kwargs: dict) -> Teacher:
    scheme, colon, rest = spec.partition(":")
    if not colon:
        teacher = _build_registered(spec, weights, kwargs)
    elif scheme == "file":
        if weights is not None:
            raise TeacherSpecError(f"{spec!r} already names its weights file; do not pass weights= as well")
        path, arch = _split_file_spec(rest)
        return _build(arch, _weights_path(path), kwargs)
    elif scheme == "ensemble":
        return _build_ensemble(rest, weights, kwargs)
    elif scheme in ("timm", "torchvision"):
        teacher = _build_hub(scheme, rest.strip(), weights, kwargs)
    else:
        raise TeacherSpecError(f"unknown teacher spec scheme {scheme + ':'!r} in {spec!r}; use a registered name "
                               f"({', '.join(list_teachers())}) or one of {', '.join(s + ':' for s in SCHEMES)}")
    teacher.spec = f"file:{weights}@{teacher.spec}" if weights else teacher.spec
    return teacher


def _build_registered(name: str, weights: str | None, kwargs: dict) -> Teacher:
    if name not in _FACTORIES:
        raise TeacherSpecError(_unknown_name_message(name))
    teacher = _FACTORIES[name](**kwargs, **({"weights": weights} if weights else {}))
    if not isinstance(teacher, Teacher):
        raise TypeError(f"the factory registered as {name!r} returned {type(teacher).__name__}, not a Teacher")
    teacher.spec = name
    return teacher


def _unknown_name_message(name: str) -> str:
    if not name:
        return "empty teacher spec; " + _hint()
    close = difflib.get_close_matches(name, list_teachers(), n=1)
    maybe = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown teacher {name!r}.{maybe} " + _hint()


def _hint() -> str:
    return (f"registered teachers: {', '.join(list_teachers())}; or use timm:<name>, torchvision:<name>, "
            "file:<path>@<arch spec>, ensemble:<spec>+<spec>")


def _split_file_spec(rest: str) -> tuple[str, str]:
    path, at, arch = rest.rpartition("@")
    if not at:
        path, arch = rest, ""
    path, arch = path.strip(), arch.strip()
    if not path:
        raise TeacherSpecError(f"file: spec needs a path, as in file:/path/model.pth@timm:resnet18; got {rest!r}")
    if arch:
        return path, arch
    _, meta = load_checkpoint(_weights_path(path))
    if isinstance(meta.get("arch"), str):
        return path, meta["arch"]
    raise TeacherSpecError(f"{path} does not record its architecture; say which it is, as in "
                           f"file:{path}@timm:<model name> or file:{path}@torchvision:<model name>")


def _build_hub(scheme: str, name: str, weights: str | None, kwargs: dict) -> Teacher:
    if not name:
        raise TeacherSpecError(f"{scheme}: needs a model name, as in {scheme}:resnet18")
    if kwargs:
        raise TeacherSpecError(f"{scheme}: teachers take no extra arguments, got {sorted(kwargs)}")
    from . import timm_teachers

    factory = timm_teachers.timm_teacher if scheme == "timm" else timm_teachers.torchvision_teacher
    return factory(name, weights=weights)


def _build_ensemble(rest: str, weights: str | None, kwargs: dict) -> Teacher:
    if weights is not None or kwargs:
        raise TeacherSpecError("an ensemble takes no weights=/keyword arguments; give each member its own spec "
                               "(e.g. file:<path>@timm:<name>)")
    members = [part.strip() for part in rest.split("+")]
    if len(members) < 2 or not all(members):
        raise TeacherSpecError(f"ensemble: needs two or more member specs joined by '+', as in "
                               f"ensemble:efficientnet_lite0+efficientnet_lite1; got {rest!r}")
    if any(member.startswith("ensemble:") for member in members):
        raise TeacherSpecError("ensembles cannot be nested; list all members in one ensemble: spec")
    from .ensemble import EnsembleTeacher

    return EnsembleTeacher([_build(member, None, {}) for member in members])
