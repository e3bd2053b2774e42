"""A workspace: what the notebook widgets (and scripts) share — training images, their region label store, the
teacher that made it, a held-out set and the folder runs go to.

``Workspace.fashion_mnist("small")`` and ``Workspace.photos()`` build one on the offline data, generating the
label store on first use (cached under ``$SOFTLAB_HOME/workspaces``, with a progress bar) and reopening it
afterwards. ``SOFTLAB_NOTEBOOK_MODE=small`` is how notebooks ask for their small mode (:func:`notebook_mode`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .data import ImageDataset, load_dataset
from .data.crops import CropParams
from .labels import LabelStore, generate_labels
from .runtime import keep_freed_memory

MODE_VARIABLE = "SOFTLAB_NOTEBOOK_MODE"
NOTEBOOK_MODES = ("small", "full")

# Workspace sizes: training images × stored regions per image, and held-out images.
FASHION_MNIST_SIZES = {"small": dict(images=600, crops=16, test=500), "full": dict(images=8000, crops=32, test=10000)}
PHOTO_CROPS = {"small": 24, "full": 128}


def notebook_mode(default: str = "full") -> str:
    """``"small"`` or ``"full"``: the value of ``$SOFTLAB_NOTEBOOK_MODE`` (tiny subsets, one epoch in CI)."""
    mode = os.environ.get(MODE_VARIABLE, default).strip().lower() or default
    if mode not in NOTEBOOK_MODES:
        raise ValueError(f"{MODE_VARIABLE} must be one of {', '.join(NOTEBOOK_MODES)}, not {mode!r}")
    return mode


def workspace_home() -> Path:
    from .teachers.fashion_mnist import softlab_home

    return softlab_home() / "workspaces"


@dataclass
class Workspace:
    """Training images, their label store, the teacher, a held-out set and where runs are written."""

    name: str
    dataset: ImageDataset
    store: LabelStore
    teacher: object
    test: ImageDataset | None
    runs: Path
    data_spec: str | None = None          # how a TrainConfig names ``dataset`` ("fashion-mnist", "photos")
    data_limit: int | None = None
    test_spec: str | None = None
    test_limit: int | None = None

    def __post_init__(self):
        # a notebook's kernel is a softlab session: large tensors reuse freed memory (softlab.runtime)
        keep_freed_memory()

    @property
    def crop_params(self) -> CropParams:
        """The crop settings the store's regions were sampled with (what stored-label training replays)."""
        crops = self.store.manifest["crops"]
        return CropParams.from_dict({key: crops[key] for key in ("scale", "ratio", "flip_p", "interpolation")})

    @classmethod
    def fashion_mnist(cls, mode: str = "full", root=None, runs="runs", progress: bool = True) -> "Workspace":
        """Fashion-MNIST with the in-project teacher (trained and cached on first use): ``small`` is 600 images ×
        16 regions, ``full`` 8000 × 32 (the demo's default budget)."""
        from .train.demo import demo_teacher, settings_for

        size = FASHION_MNIST_SIZES[_check_mode(mode)]
        teacher = demo_teacher(settings_for("small" if mode == "small" else "default"), progress)
        dataset = load_dataset("fashion-mnist", limit=size["images"])
        store = _store(dataset, teacher, root, f"fashion-mnist-{size['images']}x{size['crops']}", size["crops"],
                       CropParams(scale=(0.25, 1.0)), progress)
        test = load_dataset("fashion-mnist:test", limit=size["test"])
        return cls(f"fashion-mnist ({mode})", dataset, store, teacher, test, Path(runs), "fashion-mnist",
                   size["images"], "fashion-mnist:test", size["test"])

    @classmethod
    def photos(cls, mode: str = "full", teacher="efficientnet_lite0", crops: int | None = None, root=None,
               runs="runs", progress: bool = True) -> "Workspace":
        """The 20 labelled ImageNet photos with a pretrained ImageNet teacher (EfficientNet-Lite0 by default)."""
        from .teachers import create_teacher

        crops = crops or PHOTO_CROPS[_check_mode(mode)]
        teacher = create_teacher(teacher) if isinstance(teacher, str) else teacher
        dataset = load_dataset("photos")
        store = _store(dataset, teacher, root, f"photos-{teacher.spec.replace(':', '_')}-{crops}", crops,
                       CropParams(), progress)
        return cls(f"photos ({teacher.spec})", dataset, store, teacher, dataset, Path(runs), "photos", None,
                   "photos", None)

    @classmethod
    def from_store(cls, store, dataset, teacher=None, test=None, runs="runs", data_spec: str | None = None,
                   data_limit: int | None = None) -> "Workspace":
        """A workspace around an existing store and the data set it was generated from."""
        store = store if isinstance(store, LabelStore) else LabelStore.open(store)
        spec = data_spec or (str(dataset) if isinstance(dataset, (str, Path)) else None)
        dataset = load_dataset(dataset)
        if len(dataset) != store.num_images:
            raise ValueError(f"the store {store.path} labels {store.num_images} images but the data set has "
                             f"{len(dataset)}; pass the data set the store was generated from")
        return cls(Path(store.path).name, dataset, store, teacher, test, Path(runs), spec,
                   data_limit)


def _check_mode(mode: str) -> str:
    if mode not in NOTEBOOK_MODES:
        raise ValueError(f"workspace mode must be one of {', '.join(NOTEBOOK_MODES)}, not {mode!r}")
    return mode


def _store(dataset, teacher, root, name: str, crops: int, crop_params: CropParams, progress: bool) -> LabelStore:
    folder = Path(root) if root is not None else workspace_home()
    sha = (teacher.weights_sha256() or "x")[:8] if hasattr(teacher, "weights_sha256") else "x"
    return generate_labels(dataset, teacher, folder / f"{name}-{sha}", num_crops=crops, crop_params=crop_params,
                           progress=progress)
