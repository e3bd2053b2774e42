"""Teachers: frozen classifiers that label image crops, by name or spec string.

``create_teacher("efficientnet_lite0")`` (offline ImageNet), ``"fashion_mnist_cnn"`` (trained in-project),
``"timm:<name>"``, ``"torchvision:<name>"``, ``"file:<path>@<arch spec>"`` and ``"ensemble:<a>+<b>"``.
"""
from .base import Teacher, TeacherUnavailableError, evaluate_classifier, load_checkpoint, save_checkpoint
from .registry import TeacherSpecError, create_teacher, list_teachers, register_teacher
from .ensemble import EnsembleTeacher
from . import bundled as _bundled  # noqa: F401  registers efficientnet_lite0/1/2
from .fashion_mnist import default_checkpoint_path, train_fashion_mnist_teacher
from .probe import (TeacherChoice, TeacherProbe, ensemble_spec, probe_dataset, probe_teacher,
                    teacher_choices)

__all__ = ["Teacher", "EnsembleTeacher", "TeacherUnavailableError", "TeacherSpecError", "create_teacher",
           "list_teachers", "register_teacher", "evaluate_classifier", "train_fashion_mnist_teacher",
           "default_checkpoint_path", "load_checkpoint", "save_checkpoint", "TeacherChoice", "TeacherProbe",
           "ensemble_spec", "probe_dataset", "probe_teacher", "teacher_choices"]
