"""Workspaces: the notebook mode switch, reopening a store, and the real photos with EfficientNet-Lite0."""
import time

import pytest

from softlab.data.crops import CropParams
from softlab.labels import generate_labels
from softlab.workspace import Workspace, notebook_mode
from tiny import LinearTeacher, NoiseImages


@pytest.mark.parametrize("value,expected", [(None, "full"), ("small", "small"), (" Full ", "full"), ("", "full")])
def test_notebook_mode_reads_the_environment(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("SOFTLAB_NOTEBOOK_MODE", raising=False)
    else:
        monkeypatch.setenv("SOFTLAB_NOTEBOOK_MODE", value)
    assert notebook_mode() == expected


def test_an_unknown_notebook_mode_is_refused(monkeypatch):
    monkeypatch.setenv("SOFTLAB_NOTEBOOK_MODE", "tiny")
    with pytest.raises(ValueError, match="SOFTLAB_NOTEBOOK_MODE must be one of small, full, not 'tiny'"):
        notebook_mode()


def test_a_workspace_around_a_store_checks_its_data_set_and_knows_its_crops(tmp_path):
    data = NoiseImages(count=6)
    params = CropParams(scale=(0.3, 0.9), ratio=(0.5, 2.0), flip_p=0.25)
    store = generate_labels(data, LinearTeacher(), tmp_path / "s", num_crops=4, crop_params=params, progress=False)
    workspace = Workspace.from_store(tmp_path / "s", data, runs=tmp_path / "runs")
    assert workspace.crop_params == params
    assert workspace.store.num_images == 6 and workspace.name == "s"
    with pytest.raises(ValueError, match="labels 6 images but the data set has 5"):
        Workspace.from_store(store, NoiseImages(count=5))


@pytest.mark.slow
def test_the_photo_workspace_labels_once_then_reopens(tmp_path):
    workspace = Workspace.photos(crops=2, root=tmp_path, progress=False)
    assert (workspace.store.num_images, workspace.store.num_crops) == (20, 2)
    assert workspace.teacher.spec == "efficientnet_lite0"
    assert workspace.store.manifest["complete"]
    marker = sorted((workspace.store.path / "chunks").glob("*.json"))[0]
    written = marker.stat().st_mtime_ns
    again = Workspace.photos(crops=2, root=tmp_path, progress=False)
    assert again.store.path == workspace.store.path
    assert marker.stat().st_mtime_ns == written  # reopened, not regenerated
