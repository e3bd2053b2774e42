import json

import numpy as np
import pytest

from softlab.cli import main
from softlab.labels import LabelStore, generate_labels
from tiny import LinearTeacher, NoiseImages


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "store"
    generate_labels(NoiseImages(), LinearTeacher(), path, num_crops=6, label_type="marginal_smoothing_k2",
                    progress=False)
    return path


def test_inspect_summary_and_one_image(store_path, capsys):
    assert main(["labels", "inspect", str(store_path), "--json", "--verify"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert summary["images"] == 23 and summary["crops_per_image"] == 6 and summary["complete"]
    assert main(["labels", "inspect", str(store_path), "--image", "4", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    store = LabelStore.open(store_path)
    assert shown["target"] == 4 and len(shown["crops"]) == 6
    np.testing.assert_allclose(shown["crops"][2]["box"], store.coords[4, 2].astype(float), atol=1e-4)
    assert shown["crops"][2]["y_s"] == pytest.approx(float(store.y_s[4, 2]))


def test_calibrate_prints_counts(store_path, capsys):
    assert main(["calibrate", str(store_path), "--t-low", "0.1", "--t-mid", "0.3", "--t-top", "0.9", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    y_s = np.asarray(LabelStore.open(store_path).y_s)
    assert stats["counts"]["discarded_hard"] == int((y_s < 0.1).sum())
    assert main(["calibrate", str(store_path), "--mode", "quantile", "--per-class"]) == 0
    table = capsys.readouterr().out
    assert "quantile" in table and "c5" in table and "kept for training" in table


def test_invalid_calibration_is_a_clear_error(store_path, capsys):
    assert main(["calibrate", str(store_path), "--t-low", "0.6", "--t-mid", "0.2"]) == 2
    assert "t_low <= t_mid <= t_top" in capsys.readouterr().err
    assert main(["calibrate", str(store_path), "--epsilon", "1"]) == 2
    assert "epsilon must lie in [0, 1)" in capsys.readouterr().err


def test_export_then_import_fkd(store_path, tmp_path, capsys):
    assert main(["labels", "export-fkd", str(store_path), str(tmp_path / "fkd"), "--fp16"]) == 0
    assert main(["labels", "import-fkd", str(tmp_path / "fkd"), "--out", str(tmp_path / "back")]) == 0
    back = LabelStore.open(tmp_path / "back")
    assert back.num_images == 23 and back.label_type.name == "marginal_smoothing_k2"


def test_missing_store_is_reported(tmp_path, capsys):
    assert main(["labels", "inspect", str(tmp_path / "nope")]) == 2
    assert "not a label store" in capsys.readouterr().err
