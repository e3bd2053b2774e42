"""Training students from region soft labels (FKD), FerKD-calibrated labels with SelfMix, and the baselines.

``train(recipe="ferkd", store=..., calibration={...})`` runs one job; ``start_run`` runs it in a background
thread; recipes are a registry (``list_recipes()``, ``describe_recipe(name)``); loss functions are pure
functions in :mod:`softlab.train.losses`; mixing lives in :mod:`softlab.train.mixing`.
"""
from .config import TrainConfig
from .demo import DEMO_CALIBRATION, MODES as DEMO_MODES, DemoSettings, run_compare, run_demo
from .engine import RunResult, Trainer, TrainingDivergedError, metrics_without_timing
from .events import (Broadcaster, EndEvent, EpochEvent, ErrorEvent, EventQueue, NoteEvent, RunControl, StartEvent,
                     StepEvent, to_dict)
from .loader import Batch, MultiCropLoader, RandomCrops, StoredCrops, cut_crops_grid
from .mixing import Mixing, mix, mix_targets, plan_mix
from .preview import CropPreview, MixedPreview, preview_crops, preview_mixed
from .progress import TqdmProgress
from .recipes import Distiller, create_recipe, describe_recipe, get_recipe, list_recipes, register_recipe
from .run import RunHandle, start_run, train
from .runs import RunSummary, list_runs, load_history, next_run_name, read_run, run_histories
from .tracker import ProgressTracker, format_duration
from .students import Student, create_student, list_students, load_student, register_student

__all__ = ["TrainConfig", "DEMO_CALIBRATION", "DEMO_MODES", "DemoSettings", "run_compare", "run_demo", "RunResult",
           "Trainer", "TrainingDivergedError", "metrics_without_timing", "Broadcaster", "EndEvent", "EpochEvent",
           "ErrorEvent", "EventQueue", "NoteEvent", "RunControl", "StartEvent", "StepEvent", "to_dict", "Batch",
           "MultiCropLoader",
           "RandomCrops", "StoredCrops", "cut_crops_grid", "Mixing", "mix", "mix_targets", "plan_mix", "TqdmProgress",
           "CropPreview", "MixedPreview", "preview_crops", "preview_mixed",
           "Distiller", "create_recipe", "describe_recipe", "get_recipe", "list_recipes", "register_recipe",
           "RunHandle", "start_run", "train", "RunSummary", "list_runs", "load_history", "next_run_name",
           "read_run", "run_histories", "ProgressTracker", "format_duration",
           "Student", "create_student", "list_students", "load_student",
           "register_student"]
