"""TeacherPicker driven from Python: what it lists, loads, shows and says when a teacher cannot load."""
import time

import pytest
import torch
from torch import nn

pytest.importorskip("ipywidgets")
import ipywidgets as W  # noqa: E402

from softlab.teachers import EnsembleTeacher, Teacher, create_teacher, list_teachers, probe_teacher  # noqa: E402
from softlab.teachers import fashion_mnist, registry, timm_teachers  # noqa: E402
from softlab.teachers.probe import ANY_SPEC  # noqa: E402
from softlab.widgets import TeacherPicker  # noqa: E402
from tiny import LinearTeacher, NoiseImages  # noqa: E402

CLASSES = [f"c{i}" for i in range(6)]


def tiny_teacher(seed):
    """A real Teacher: a seeded linear map from 1×12×12 images to 6 classes."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 6))
    with torch.no_grad():
        model[1].weight.mul_(8)
    return Teacher(model, spec="tiny", input_size=(1, 12, 12), mean=(0.5,), std=(0.25,), class_names=CLASSES)


@pytest.fixture
def tiny_registry(monkeypatch, tmp_path):
    """Two tiny registered teachers, and an empty softlab home (so no Fashion-MNIST teacher is cached)."""
    monkeypatch.setenv("SOFTLAB_HOME", str(tmp_path))
    monkeypatch.setitem(registry._FACTORIES, "tiny_a", lambda: tiny_teacher(1))
    monkeypatch.setitem(registry._FACTORIES, "tiny_b", lambda: tiny_teacher(2))


@pytest.fixture
def data():
    return NoiseImages(count=14, num_classes=6)


def assert_shows(picker, expected):
    """The picker's probe, summary and figure equal ``expected`` (a probe computed by the test)."""
    probe = picker.probe
    assert (probe.spec, probe.data, probe.count, probe.correct) == \
        (expected.spec, expected.data, expected.count, expected.correct)
    assert [(e.index, e.classes, e.target) for e in probe.examples] == \
        [(e.index, e.classes, e.target) for e in expected.examples]
    for shown, wanted in zip(probe.examples, expected.examples):
        assert shown.probs == pytest.approx(wanted.probs, rel=1e-6)
    assert f"top-1 {100 * expected.top1:.1f}% ({expected.correct} of the first {expected.count}" \
        in picker.summary.value
    bars = [trace for trace in picker.figure.data if trace.type == "bar"]
    assert len(bars) == len(expected.examples)
    for trace, wanted in zip(bars, expected.examples):
        assert tuple(trace.x) == pytest.approx(wanted.probs, rel=1e-6)


def test_dropdown_lists_the_registry_then_the_spec_forms(tiny_registry):
    picker = TeacherPicker(spec="timm:resnet18", auto_load=False)
    assert isinstance(picker, W.VBox)
    keys = [value for _label, value in picker.choice.options]
    assert keys[:-5] == [k for k in keys[:-5] if k in list_teachers()] and set(keys[:-5]) == set(list_teachers())
    assert keys[-5:] == ["timm:", "torchvision:", "file:", "ensemble:", ANY_SPEC]
    assert dict(picker.choice.options)["tiny_a — a registered teacher"] == "tiny_a"
    assert set(picker.members.options) == set(list_teachers())
    assert (picker.choice.value, picker.text.value, picker.teacher_spec) == ("timm:", "resnet18", "timm:resnet18")
    assert picker.teacher is None and picker.members.layout.display == "none"


def test_choosing_a_ready_teacher_loads_it_and_shows_its_probe(tiny_registry, data):
    picker = TeacherPicker(dataset=data, spec="tiny_a", limit=10, show=3)
    assert picker.teacher_spec == "tiny_a" and picker.teacher.spec == "tiny_a"
    assert picker.message.kind == "ok" and picker.message.text.startswith("loaded tiny_a in ")
    assert_shows(picker, probe_teacher(create_teacher("tiny_a"), data, limit=10, show=3))

    seen = []
    picker.on_config_change(lambda source: seen.append(source.teacher_spec))
    picker.choice.value = "tiny_b"
    assert seen == ["tiny_b", "tiny_b"]  # the new spec, then its loaded teacher
    assert_shows(picker, probe_teacher(create_teacher("tiny_b"), data, limit=10, show=3))
    loaded = picker.teacher
    picker.choice.value = "tiny_a"
    picker.choice.value = "tiny_b"
    assert picker.teacher is loaded  # chosen again: shown from memory, not reloaded


@pytest.mark.parametrize("dataset", [None, NoiseImages(count=5, num_classes=4)])
def test_a_teacher_without_held_out_data_loads_with_a_warning(tiny_registry, dataset):
    picker = TeacherPicker(spec="tiny_a", dataset=dataset)
    assert isinstance(picker.teacher, Teacher) and picker.probe is None
    assert picker.message.kind == "warning" and "no held-out images for its 6 classes" in picker.message.text
    assert picker.summary.value == "" and len(picker.figure.data) == 0


def test_ensemble_by_multi_select(tiny_registry, data):
    picker = TeacherPicker(dataset=data, spec="tiny_a", limit=12, show=2)
    seen = []
    picker.on_config_change(lambda source: seen.append(source.teacher_spec))
    picker.choice.value = "ensemble:"
    assert picker.teacher_spec is None and picker.teacher is None and len(picker.figure.data) == 0
    assert picker.members.layout.display == "" and picker.text.layout.display == "none"
    picker.members.value = ("tiny_a",)
    assert picker.teacher_spec is None and "two or more" in picker.message.text
    picker.members.value = ("tiny_a", "tiny_b")
    assert picker.teacher_spec == "ensemble:tiny_a+tiny_b" and picker.teacher is None  # waits for Load
    assert seen == [None, "ensemble:tiny_a+tiny_b"]

    picker.load_button.click()
    assert isinstance(picker.teacher, EnsembleTeacher) and picker.teacher.spec == "ensemble:tiny_a+tiny_b"
    assert_shows(picker, probe_teacher(create_teacher("ensemble:tiny_a+tiny_b"), data, limit=12, show=2))


def _offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(timm_teachers, "_reachable", lambda url, timeout=0: False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(timm_teachers, "_torch_hub_dir", lambda: str(tmp_path / "torch"))


@pytest.mark.parametrize("choice, text, reason", [
    ("timm:", "resnet18", "file:PATH@timm:resnet18"),
    ("file:", "/missing.pth@resnet18", "/missing.pth does not exist"),
    (ANY_SPEC, "no_such_teacher", "unknown teacher 'no_such_teacher'"),
    (ANY_SPEC, "ensemble:tiny_a+fashion_mnist_cnn+", "ensemble: needs two or more member specs"),
])
def test_a_teacher_that_cannot_load_says_why(tiny_registry, monkeypatch, tmp_path, data, choice, text, reason):
    _offline(monkeypatch, tmp_path)
    picker = TeacherPicker(dataset=data, spec="tiny_a", limit=8)
    assert picker.teacher is not None
    picker.choice.value = choice
    picker.text.value = text
    started = time.perf_counter()
    picker.load_button.click()
    assert time.perf_counter() - started < 10
    assert picker.teacher is None and picker.probe is None
    assert picker.message.kind == "error" and reason in picker.message.text
    assert picker.message.text.startswith(f"{picker.teacher_spec} could not be loaded: ")
    assert "Traceback" not in picker.message.value and picker.summary.value == "" and len(picker.figure.data) == 0
    assert not picker.spinner.busy and not picker.load_button.disabled


def test_an_unknown_spec_given_to_the_constructor_is_shown_not_raised(tiny_registry):
    picker = TeacherPicker(spec="no_such_teacher")
    assert (picker.choice.value, picker.text.value, picker.teacher_spec) == (ANY_SPEC, "no_such_teacher",
                                                                            "no_such_teacher")
    assert picker.load() is None
    assert picker.message.kind == "error" and "unknown teacher 'no_such_teacher'" in picker.message.text


def test_the_fashion_teacher_never_trains_by_surprise(tiny_registry, monkeypatch):
    """Not cached: choosing it only says that loading trains it; Load trains it with the spinner saying so."""
    calls = []

    def fake_training(cache_dir=None, **kwargs):
        calls.append(picker.spinner.value if picker.spinner.busy else None)
        model = fashion_mnist.build_model(num_classes=10, **fashion_mnist.MODEL_KWARGS)
        return fashion_mnist.save_checkpoint(
            fashion_mnist.default_checkpoint_path(cache_dir), model, arch=fashion_mnist.NAME,
            model_kwargs=fashion_mnist.MODEL_KWARGS, num_classes=10, input_size=[1, 28, 28],
            mean=list(fashion_mnist.MEAN), std=list(fashion_mnist.STD), class_names=CLASSES + list("wxyz"))

    monkeypatch.setattr(fashion_mnist, "train_fashion_mnist_teacher", fake_training)
    picker = TeacherPicker(spec="fashion_mnist_cnn", dataset=NoiseImages(count=6, num_classes=10), show=2)
    assert calls == [] and picker.teacher is None
    assert picker.message.kind == "warning" and "not trained yet" in picker.message.text
    assert not picker.current_choice.ready

    picker.load_button.click()
    assert len(calls) == 1 and "loading it first trains it" in calls[0]
    assert picker.teacher.spec == "fashion_mnist_cnn" and picker.message.kind == "ok"
    assert picker.current_choice.ready  # cached now
    assert_shows(picker, probe_teacher(picker.teacher, NoiseImages(count=6, num_classes=10), show=2))


def test_a_given_teacher_is_shown_as_is(data):
    teacher = LinearTeacher(num_classes=6, scale=8.0)
    picker = TeacherPicker(dataset=data, teacher=teacher, limit=9, show=2)
    assert picker.teacher is teacher and picker.teacher_spec == "test:linear"
    assert (picker.choice.value, picker.text.value) == (ANY_SPEC, "test:linear")
    assert_shows(picker, probe_teacher(teacher, data, limit=9, show=2))


@pytest.mark.slow
def test_efficientnet_lite0_in_the_picker():
    """Given data of other classes (as in a Fashion-MNIST lab), it is probed on the ImageNet photos instead."""
    picker = TeacherPicker(dataset=NoiseImages(count=6, num_classes=10), spec="efficientnet_lite0", limit=4, show=2)
    assert picker.teacher.spec == "efficientnet_lite0"
    expected = probe_teacher(create_teacher("efficientnet_lite0"), "photos", limit=4, show=2)
    assert_shows(picker, expected)
    assert picker.probe.data == "photos" and len(picker.figure.data) == 4


@pytest.mark.slow
def test_in_a_kernel_a_failed_load_is_a_message_not_a_traceback(tmp_path):
    """In a kernel, an Output widget swallows exceptions and shows their traceback: the picker must not let it."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in [
        "from softlab.widgets import TeacherPicker\npicker = TeacherPicker(spec='file:/missing.pth@resnet18')\npicker",
        "print(picker.load(), picker.message.kind, len(picker.output.outputs))\nprint(picker.message.text)",
    ]]
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": tmp_path}},
                            ).execute()
    shown = "".join(output.get("text", "") for output in notebook.cells[1].outputs)
    assert shown.startswith("None error 0\nfile:/missing.pth@resnet18 could not be loaded: ")
    assert "/missing.pth does not exist" in shown
    assert "application/vnd.jupyter.widget-view+json" in notebook.cells[0].outputs[0]["data"]
