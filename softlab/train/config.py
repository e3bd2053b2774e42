"""A training run's full configuration: one plain dataclass, written to ``runs/<name>/config.json``."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

# Fields that may change when a run is resumed: they do not change what is computed (on one device).
RUNTIME_FIELDS = ("device", "compile", "progress", "out", "num_threads")


@dataclass
class TrainConfig:
    """Everything that defines a run. Data, store, teacher and student are given by spec strings here (objects
    may be passed to :func:`~softlab.train.train` directly; the config then records their descriptions)."""

    recipe: str = "fkd"
    name: str | None = None                 # run folder name under ``out`` (default: the recipe's name)
    out: str = "runs"
    # data
    data: str = "fashion-mnist"             # training images (must match the store's for stored-label recipes)
    data_limit: int | None = None           # the first N training images
    eval_data: str | None = "fashion-mnist:test"
    eval_limit: int | None = None
    store: str | None = None                # label store folder (fkd, ferkd)
    calibration: dict | None = None         # FerKD Calibration settings (ferkd; optional for fkd)
    teacher: str | None = None              # teacher spec (online recipes)
    # student
    student: str = "resnet10t_narrow"
    student_kwargs: dict = field(default_factory=dict)
    input_size: int | None = None           # crop side (default: the store's teacher input, else the image size)
    mean: list | None = None                # student input normalisation (default: the teacher's, else 0.5)
    std: list | None = None
    # budget
    epochs: int = 10
    batch_images: int = 64                  # images per step; each gives ``num_crops`` crops
    num_crops: int = 4
    crop: dict | None = None                # CropParams for fresh crops (default: the store's, else FKD's)
    # optimisation
    optimizer: str = "sgd"                  # sgd | adamw
    lr: float = 0.1                         # per step of batch_images × num_crops crops
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    min_lr: float = 0.0
    label_temperature: float = 1.0          # q ← q^(1/τ) renormalised, on stored labels
    recipe_options: dict = field(default_factory=dict)
    mixing: dict | None = None              # overrides the recipe's default Mixing
    # runtime
    seed: int = 0
    device: str | None = None               # default: cuda when available
    amp: bool = True                        # bf16 autocast on CUDA (never on CPU)
    channels_last: bool = True              # on CUDA
    compile: bool = False                   # torch.compile the student
    eval_every: int = 1                     # epochs between test evaluations (the last epoch always)
    checkpoint_every: int = 1               # epochs between checkpoints (the last epoch and stops always)
    keep_epoch_checkpoints: bool = False    # also keep checkpoints/epoch_XXX.pt
    num_threads: int | None = None          # torch CPU threads (default: torch's)
    progress: bool = True

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {self.optimizer!r}")
        for name in ("epochs", "batch_images", "num_crops", "eval_every", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.label_temperature <= 0:
            raise ValueError("lr and label_temperature must be positive")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs must lie in [0, epochs], got {self.warmup_epochs}")

    @property
    def run_name(self) -> str:
        return self.name or self.recipe

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
        return cls(**data)

    @classmethod
    def load(cls, path) -> "TrainConfig":
        return cls.from_dict(json.loads(open(path).read())["config"])

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def differences(self, other: "TrainConfig") -> list[str]:
        """Fields (other than runtime ones) on which two configs differ."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in RUNTIME_FIELDS and a[k] != b.get(k)]
