"""Inputs that users get wrong: undecodable images, missing data paths, zero crops, FKD file names and the
evaluation transform of ImageNet teachers."""
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from softlab.cli import main
from softlab.data import BadImageError, ImageDataset, MissingDatasetError, load_dataset
from softlab.labels import generate_labels
from softlab.labels.generate import SkippedImagesWarning, skipped_images
from softlab.teachers import Teacher, registry
from softlab.teachers.base import eval_transform, evaluate_classifier
from tiny import LinearTeacher, NoiseImages
from torchvision import tv_tensors

GOOD = 6  # good images per folder: cat/img0-2, dog/img0-2; the bad files sort after them (indices 6 and 7)
PER_CROP = ("coords", "flip", "topk_idx", "topk_prob", "y_s", "entropy")


def _jpeg_bytes(rng, height=40, width=50) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def make_folder(root, bad: bool = True):
    """Two class folders of small PNG and JPEG images; with ``bad``, dog/x.jpg (a text file) and dog/y.jpg (the
    first half of a real JPEG) as well, named so that they come last (ImageFolder sorts classes, then files)."""
    rng = np.random.default_rng(0)
    for class_dir in ("cat", "dog"):
        (root / class_dir).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (18 + i, 22 - i, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / class_dir / f"img{i}.{'png' if i % 2 else 'jpg'}")
    if bad:
        (root / "dog" / "x.jpg").write_text("this is not an image\n")
        data = _jpeg_bytes(rng)
        (root / "dog" / "y.jpg").write_bytes(data[: len(data) // 2])
    return root


SETTINGS = dict(num_crops=3, chunk_size=4, batch_size=3, label_type="marginal_smoothing_k1", seed=5,
                progress=False, device="cpu")


# ----- 1. undecodable images
def test_undecodable_images_name_the_file_the_index_and_the_cause(tmp_path):
    data = load_dataset(str(make_folder(tmp_path / "pics")))
    assert [data.image_id(i) for i in range(GOOD, GOOD + 2)] == ["dog/x", "dog/y"]
    with pytest.raises(BadImageError, match=r"^cannot decode dog/x\.jpg \(image 6 of .*pics\): not an image") as info:
        data[6]
    assert (info.value.index, info.value.path, info.value.reason) == (6, "dog/x.jpg", "not an image")
    with pytest.raises(BadImageError, match=r"^cannot decode dog/y\.jpg \(image 7 of .*pics\): truncated") as info:
        data[7]
    assert info.value.reason == "truncated" and "truncated" in info.value.detail
    assert data[5][0].shape == (3, 20, 20)  # the good ones still load


def test_a_bad_image_among_the_fingerprint_samples_leaves_a_stable_fingerprint(tmp_path):
    root = make_folder(tmp_path / "pics")
    first = load_dataset(str(root)).fingerprint()  # 8 images, all sampled: the two bad ones included
    assert load_dataset(str(root)).fingerprint() == first
    Image.new("RGB", (5, 5)).save(root / "dog" / "x.jpg", "JPEG")  # repaired: the fingerprint sees its pixels
    assert load_dataset(str(root)).fingerprint() != first


def test_fail_mode_stops_before_the_chunk_and_a_skip_rerun_resumes(tmp_path):
    data = load_dataset(str(make_folder(tmp_path / "pics")))
    out, written = tmp_path / "store", []
    # chunks of 4: images 0-3, then 4-7 (good 4 and 5, bad 6 and 7); the bad ones are among the fingerprint's
    # samples, so this is also the message a bad sampled image gives
    with pytest.raises(BadImageError) as info:
        generate_labels(data, LinearTeacher(num_classes=2), out, before_marker=written.append, **SETTINGS)
    message = str(info.value)
    assert message.startswith("cannot decode dog/x.jpg (image 6 of ") and "not an image" in message
    assert "before writing chunk 1 (images 4-7)" in message and "--on-bad-image skip" in message
    assert written == [0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and not manifest.get("skipped")
    assert sorted(p.name for p in (out / "chunks").iterdir()) == ["000000.json"]

    with pytest.warns(SkippedImagesWarning, match=r"skipped 2 of 8 images .*dog/x\.jpg \(image 6: not an image\), "
                                                  r"dog/y\.jpg \(image 7: truncated\)"):
        store = generate_labels(data, LinearTeacher(num_classes=2), out, before_marker=written.append,
                                on_bad_image="skip", **SETTINGS)
    assert written == [0, 1]  # chunk 0 was kept, not redone
    assert [(e["index"], e["id"], e["path"], e["reason"]) for e in skipped_images(store)] == \
        [(6, "dog/x", "dog/x.jpg", "not an image"), (7, "dog/y", "dog/y.jpg", "truncated")]
    assert store.manifest["skipped"] == skipped_images(store)

    # the skipped images hold no labels
    assert np.isnan(store.y_s[GOOD:]).all() and np.isnan(store.entropy[GOOD:]).all()
    assert not np.asarray(store.topk_prob[GOOD:]).any() and not np.asarray(store.topk_idx[GOOD:]).any()
    assert not np.asarray(store.coords[GOOD:]).any() and not np.asarray(store.flip[GOOD:]).any()
    assert store.targets[GOOD:].tolist() == [1, 1]

    # every other image holds what a run on the folder without the bad files gives. Crops are seeded per image
    # index, and the bad files come last, so the good images have the same indices there; with batches of
    # exactly one image's crops (batch_size = num_crops) both runs make the same computations: equal arrays.
    clean = generate_labels(load_dataset(str(make_folder(tmp_path / "clean", bad=False))),
                            LinearTeacher(num_classes=2), tmp_path / "clean-store", **SETTINGS)
    assert skipped_images(clean) == [] and clean.num_images == GOOD
    for name in PER_CROP:
        np.testing.assert_array_equal(np.asarray(getattr(store, name)[:GOOD]), np.asarray(getattr(clean, name)[:]),
                                      err_msg=name)
    np.testing.assert_array_equal(store.targets[:GOOD], clean.targets[:])
    assert store.summary()["images_done"] == 8


def test_skip_in_one_run_without_a_failure_first(tmp_path):
    data = load_dataset(str(make_folder(tmp_path / "pics")))
    with pytest.warns(SkippedImagesWarning):
        store = generate_labels(data, LinearTeacher(num_classes=2), tmp_path / "store", on_bad_image="skip",
                                **SETTINGS)
    assert [e["index"] for e in skipped_images(store)] == [6, 7] and store.manifest["complete"]
    with pytest.raises(ValueError, match="on_bad_image must be one of fail, skip"):
        generate_labels(data, LinearTeacher(num_classes=2), tmp_path / "other", on_bad_image="ignore", **SETTINGS)


def test_fkd_export_writes_no_file_for_skipped_images(tmp_path):
    from softlab.labels.fkd import export_fkd

    data = load_dataset(str(make_folder(tmp_path / "pics")))
    with pytest.warns(SkippedImagesWarning):
        store = generate_labels(data, LinearTeacher(num_classes=2), tmp_path / "store", on_bad_image="skip",
                                **SETTINGS)
    assert export_fkd(store, tmp_path / "fkd", progress=False) == GOOD
    written = sorted(p.relative_to(tmp_path / "fkd" / "train").as_posix()
                     for p in (tmp_path / "fkd" / "train").rglob("*.tar"))
    assert written == [f"{c}/img{i}.tar" for c in ("cat", "dog") for i in range(3)]


class _ChannelContrast(nn.Module):
    """Logits (red − blue, blue − red) of a crop's channel means: deterministic and weightless."""

    def forward(self, x):
        means = x.mean(dim=(2, 3))
        return torch.stack([means[:, 0] - means[:, 2], means[:, 2] - means[:, 0]], dim=1) * 4


@pytest.fixture
def tiny_teacher_name(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))

    @registry.register_teacher("test_bad_inputs_tiny")
    def make(weights=None):
        return Teacher(_ChannelContrast(), spec="test_bad_inputs_tiny", input_size=(3, 8, 8), mean=(0.0,) * 3,
                       std=(1.0,) * 3, class_names=["cat", "dog"])

    return "test_bad_inputs_tiny"


def test_cli_fails_naming_the_file_then_skips_and_reports(tmp_path, tiny_teacher_name, capsys):
    root, out = make_folder(tmp_path / "pics"), tmp_path / "store"
    command = ["labels", "generate", "--data", str(root), "--teacher", tiny_teacher_name, "--out", str(out),
               "--crops", "2", "--chunk-size", "3", "--label-type", "hard", "--device", "cpu"]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert "error: cannot decode dog/x.jpg (image 6 of " in error and "--on-bad-image skip" in error
    assert main(command + ["--on-bad-image", "skip"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 2 of 8 images that could not be decoded" in printed
    assert "dog/x.jpg (image 6: not an image), dog/y.jpg (image 7: truncated)" in printed
    assert str(out / "manifest.json") in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert [entry["path"] for entry in manifest["skipped"]] == ["dog/x.jpg", "dog/y.jpg"]


# ----- 2. data paths
def test_a_missing_data_path_says_it_does_not_exist(tmp_path, tiny_teacher_name, capsys, monkeypatch):
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(MissingDatasetError, match=f"data path {missing} does not exist"):
        load_dataset(str(missing))
    monkeypatch.chdir(tmp_path)
    for spec in ("./pics", "~/surely-not-a-softlab-folder", "pics/"):
        with pytest.raises(MissingDatasetError, match="does not exist"):
            load_dataset(spec)
    with pytest.raises(ValueError, match="unknown dataset 'pics'"):  # a bare word is a data set name
        load_dataset("pics")
    assert main(["labels", "generate", "--data", str(missing), "--teacher", tiny_teacher_name,
                 "--out", str(tmp_path / "store")]) == 2
    assert f"error: data path {missing} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


# ----- 3. crop counts
def test_zero_or_negative_crops_are_refused(tmp_path, tiny_teacher_name, capsys):
    for bad in (0, -3):
        with pytest.raises(ValueError, match=f"num_crops must be a positive whole number, got {bad}"):
            generate_labels(NoiseImages(count=4), LinearTeacher(), tmp_path / "s", num_crops=bad, progress=False)
        assert not (tmp_path / "s").exists()
    store = generate_labels(NoiseImages(count=4), LinearTeacher(), tmp_path / "s", num_crops=None, progress=False,
                            label_type="hard", device="cpu")
    assert store.num_crops == NoiseImages(count=4).default_crops == 5
    for option, value in (("--crops", "0"), ("--crops", "-1"), ("--chunk-size", "0"), ("--batch-size", "0")):
        with pytest.raises(SystemExit) as info:
            main(["labels", "generate", "--teacher", tiny_teacher_name, "--out", str(tmp_path / "cli"), option, value])
        assert info.value.code == 2
        assert f"argument {option}: must be at least 1, got {value}" in capsys.readouterr().err


# ----- 5. the teacher's own evaluation transform
class _Recorder(nn.Module):
    """Records what it is fed; predicts class 0."""

    def __init__(self, pretrained_cfg=None):
        super().__init__()
        self.seen = []
        if pretrained_cfg is not None:
            self.pretrained_cfg = pretrained_cfg

    def forward(self, x):
        self.seen.append(x.clone())
        return torch.zeros(len(x), 2)


class _Images(ImageDataset):
    def __init__(self, images):
        super().__init__(name="given", classes=["a", "b"], targets=np.zeros(len(images), dtype=np.int64))
        self.images = images

    def load_image(self, index):
        return tv_tensors.Image(self.images[index])


def _recording_teacher(cfg, size=8):
    # mean 0 and std 1: normalising leaves the values as they are, so the recorder sees the transform's output
    return Teacher(_Recorder(cfg), spec="test:recorder", input_size=(3, size, size), mean=(0.0,) * 3,
                   std=(1.0,) * 3, class_names=["a", "b"], interpolation="nearest")


def test_evaluation_resizes_the_short_side_to_size_over_crop_pct_then_centre_crops():
    teacher = _recording_teacher({"input_size": (3, 8, 8), "crop_pct": 0.5, "interpolation": "nearest"})
    # short side to floor(8 / 0.5) = 16, then the central 8×8: top = (16 − 8) / 2 = 4, left = (32 − 8) / 2 = 12
    transform = eval_transform(teacher)
    assert (transform.size, transform.resize, transform.mode) == ((8, 8), (16, 16), "center")
    generator = torch.Generator().manual_seed(0)
    at_scale = torch.randint(0, 256, (3, 16, 32), dtype=torch.uint8, generator=generator)  # already 16 high
    half = torch.randint(0, 256, (3, 8, 16), dtype=torch.uint8, generator=generator)  # upsampled 2× to 16×32
    assert evaluate_classifier(teacher, _Images([at_scale, half]), progress=False) == 1.0
    fed = teacher.model.seen[0]
    assert fed.shape == (2, 3, 8, 8)
    torch.testing.assert_close(fed[0], at_scale[:, 4:12, 12:20].float() / 255, rtol=0, atol=0)
    # nearest 2× upsampling repeats every pixel twice along each axis: output rows 4-11 / columns 12-19 come
    # from input rows 2-5 / columns 6-9
    expected = half[:, 2:6, 6:10].repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    torch.testing.assert_close(fed[1], expected.float() / 255, rtol=0, atol=0)


@pytest.mark.parametrize("cfg", [None, {"input_size": (3, 176, 176), "crop_pct": 0.875}])
def test_teachers_without_a_recipe_for_their_size_see_whole_images_as_before(cfg):
    # the Fashion-MNIST CNN is a timm resnet10t whose pretrained_cfg describes 176-pixel ImageNet inputs, not its
    # own 28-pixel ones: images at the input size go in unchanged
    teacher = _recording_teacher(cfg, size=28)
    assert eval_transform(teacher).mode == "resize"
    image = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    evaluate_classifier(teacher, _Images([image]), progress=False)
    torch.testing.assert_close(teacher.model.seen[0][0], image.float() / 255, rtol=0, atol=0)


def test_efficientnet_lite0_is_evaluated_with_timms_crop():
    from softlab.teachers import TeacherUnavailableError, create_teacher

    try:
        teacher = create_teacher("efficientnet_lite0")
    except TeacherUnavailableError as error:
        pytest.skip(str(error))
    transform = eval_transform(teacher)
    # timm's tf_efficientnet_lite0: 224 px input, crop_pct 0.875, bicubic → short side floor(224 / 0.875) = 256
    assert (transform.size, transform.resize, transform.mode, transform.interpolation) == \
        ((224, 224), (256, 256), "center", "bicubic")
    out = transform(torch.zeros(3, 300, 400, dtype=torch.uint8))
    assert out.shape == (3, 224, 224)


def test_the_cli_names_the_evaluation_transform(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    registry.register_teacher("test_recorder")(
        lambda weights=None: _recording_teacher({"input_size": (3, 8, 8), "crop_pct": 0.5}))
    root = tmp_path / "pics"
    for class_dir in ("a", "b"):
        (root / class_dir).mkdir(parents=True)
        Image.new("RGB", (12, 10)).save(root / class_dir / "0.png")
    assert main(["teacher", "eval", "test_recorder", "--data", str(root)]) == 0
    assert "top-1 0.5000 (2 images; short side resized to 16, centre crop 8×8, nearest" in capsys.readouterr().out


def test_make_folder_files_are_what_they_claim(tmp_path):
    # guards the fixtures above: the truncated JPEG starts like a JPEG and the good ones decode
    root = make_folder(tmp_path / "pics")
    assert (root / "dog" / "y.jpg").read_bytes()[:2] == b"\xff\xd8"
    shutil.rmtree(root / "dog")
    assert len(load_dataset(str(root))) == 3


# ----- 6. stores with skipped images: verification, summary, calibration and training leave them out
SKIPPED = [6, 7]  # make_folder's two bad files come last


@pytest.fixture(scope="module")
def skip_store_dir(tmp_path_factory):
    """A complete store of make_folder's eight images made with on_bad_image="skip" (images 6 and 7 skipped), and
    the folder itself; tests copy the store before changing it."""
    base = tmp_path_factory.mktemp("skip")
    root = make_folder(base / "pics")
    with pytest.warns(SkippedImagesWarning):
        generate_labels(load_dataset(str(root)), LinearTeacher(num_classes=2), base / "store", on_bad_image="skip",
                        **SETTINGS)
    return base / "store", root


def _copy_store(skip_store_dir, tmp_path):
    target = tmp_path / "store"
    shutil.copytree(skip_store_dir[0], target)
    return target


@pytest.mark.parametrize("verify", ["auto", "full", "cheap", "none", True, False])
def test_a_skip_store_opens_at_every_verify_level(skip_store_dir, tmp_path, verify):
    from softlab.labels import LabelStore, skipped_images as exported

    store = LabelStore.open(_copy_store(skip_store_dir, tmp_path), verify=verify)
    assert [(e["index"], e["id"], e["path"], e["reason"]) for e in store.skipped] == \
        [(6, "dog/x", "dog/x.jpg", "not an image"), (7, "dog/y", "dog/y.jpg", "truncated")]
    assert store.skipped == skipped_images(store) == exported(store) == store.manifest["skipped"]
    assert store.skipped_mask().tolist() == [False] * GOOD + [True, True]
    # no regions for them either: size 0 × 0, zero boxes, no flips
    assert not store.image_size[GOOD:].any() and not store.coords[GOOD:].any() and not store.flip[GOOD:].any()
    assert (store.image_size[:GOOD] > 0).all() and (store.coords[:GOOD, :, 2:] > 0).all()
    if verify != "none":
        report = store.verify(verify)
        assert report["images_checked"] == 8 and report["crops_checked"] == 24


@pytest.mark.parametrize("name,index,value,what", [
    ("topk_prob", (6, 1, 0), 0.5, "a probability other than 0"),
    ("topk_idx", (7, 2, 0), 1, "a class index other than 0"),
    ("y_s", (7, 0), 0.25, "a value other than NaN"),
    ("entropy", (6, 2), 0.125, "a value other than NaN"),
    ("image_size", (7, 0), 5, "a size other than 0 × 0"),
])
def test_a_damaged_row_of_a_skipped_image_is_caught(skip_store_dir, tmp_path, name, index, value, what):
    from softlab.labels import LabelStore, StoreError

    path = _copy_store(skip_store_dir, tmp_path)
    array = np.load(path / f"{name}.npy", mmap_mode="r+")
    array[index] = value
    array.flush()
    del array
    where = f"image {index[0]}" if name == "image_size" else f"image {index[0]}, crop {index[1]}"
    unit = "image" if name == "image_size" else "crop"
    expected = (f"{name}.npy: 1 {unit} has {what} {'for' if name == 'image_size' else 'in'} an image that "
                f"manifest.json lists as skipped (undecodable, so without labels) (first: {where}, value {value})")
    for verify in ("cheap", "full"):
        with pytest.raises(StoreError) as info:
            LabelStore.open(path, verify=verify)
        assert expected in str(info.value)
        assert "is damaged" in str(info.value) and "--overwrite" in str(info.value)
    LabelStore.open(path, verify="none")  # reading alone does not look at the values


def test_the_other_images_are_checked_as_strictly_as_before(skip_store_dir, tmp_path):
    from softlab.labels import LabelStore, StoreError

    path = _copy_store(skip_store_dir, tmp_path)
    y_s = np.load(path / "y_s.npy", mmap_mode="r+")
    y_s[2, 1] = np.nan  # a decoded, labelled image without y_s
    y_s.flush()
    del y_s
    with pytest.raises(StoreError, match=r"y_s\.npy: 1 crop has a ground-truth probability outside \[0, 1\], or NaN "
                                         r"for a labelled image \(first: image 2, crop 1, value nan\)"):
        LabelStore.open(path, verify="cheap")

    # an image no longer listed as skipped: its NaN rows are damage, not "no label"
    path = _copy_store(skip_store_dir, tmp_path / "unlisted")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["skipped"] = manifest["skipped"][:1]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError) as info:
        LabelStore.open(path, verify="cheap")
    message = str(info.value)
    assert "y_s.npy: 3 crops have a ground-truth probability outside [0, 1], or NaN for a labelled image (first: " \
           "image 7, crop 0, value nan)" in message
    assert "entropy.npy: 3 crops have an entropy outside [0, ln 2 = 0.6931] nats, or not finite (first: image 7, " \
           "crop 0, value nan)" in message


@pytest.mark.parametrize("skipped,problem", [
    ("listed twice", "image 6 is listed more than once"),
    ("out of range", "entry 1 names image 8, outside [0, 8)"),
    ("negative", "entry 0 names image -1, outside [0, 8)"),
    ("no index", "entry 1 ({'id': 'dog/y'}) has no integer \"index\""),
    ("not a list", "manifest.json's \"skipped\" is a JSON dict, not a list of skipped images"),
])
def test_an_invalid_list_of_skipped_images_is_refused(skip_store_dir, tmp_path, skipped, problem):
    from softlab.labels import LabelStore, StoreError

    path = _copy_store(skip_store_dir, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    first, second = manifest["skipped"]
    manifest["skipped"] = {"listed twice": [first, first], "out of range": [first, {**second, "index": 8}],
                           "negative": [{**first, "index": -1}, second], "no index": [first, {"id": "dog/y"}],
                           "not a list": first}[skipped]
    (path / "manifest.json").write_text(json.dumps(manifest))
    for verify in ("none", "auto"):
        with pytest.raises(StoreError) as info:
            LabelStore.open(path, verify=verify)
        assert problem in str(info.value) and f"label store {path} is damaged" in str(info.value)


def test_summary_leaves_skipped_images_out(skip_store_dir, tmp_path):
    from softlab.labels import LabelStore

    store = LabelStore.open(skip_store_dir[0])
    summary = store.summary()
    y_s = np.asarray(store.y_s, dtype=np.float64)[:GOOD].ravel()  # the six decoded images, all labelled
    entropy = np.asarray(store.entropy, dtype=np.float64)[:GOOD].ravel()
    assert not np.isnan(y_s).any() and not np.isnan(entropy).any()
    assert summary["y_s_mean"] == pytest.approx(y_s.mean(), rel=1e-12, abs=0)
    assert summary["y_s_quartiles"] == np.quantile(y_s, [0.25, 0.5, 0.75]).round(4).tolist()
    assert summary["entropy_mean"] == pytest.approx(entropy.mean(), rel=1e-12, abs=0)
    assert (summary["images"], summary["images_done"], summary["skipped_images"]) == (8, 8, 2)
    # the same numbers as the store of the folder without the bad files (equal arrays for the good images)
    clean = generate_labels(load_dataset(str(make_folder(tmp_path / "clean", bad=False))),
                            LinearTeacher(num_classes=2), tmp_path / "clean-store", **SETTINGS).summary()
    assert clean["skipped_images"] == 0
    for key in ("y_s_mean", "y_s_quartiles", "entropy_mean"):
        assert summary[key] == pytest.approx(clean[key], rel=1e-12, abs=0), key


def _expected_counts(y_s, low, mid, top):
    """FerKD's rule written out on float64 copies of float32 y_s rows and float32-exact thresholds."""
    low, mid, top = (np.asarray(t, dtype=np.float64)[..., None] for t in (low, mid, top))
    return np.stack([(y_s < low).sum(1), ((y_s >= low) & (y_s < mid)).sum(1), ((y_s >= mid) & (y_s <= top)).sum(1),
                     (y_s > top).sum(1)], axis=1)


@pytest.mark.parametrize("mode", ["absolute", "quantile"])
def test_calibration_counts_only_the_decoded_images(skip_store_dir, mode, capsys):
    from softlab.calibrate import CATEGORIES, Calibration, CategoryCounter, calibrate
    from softlab.labels import LabelStore

    store = LabelStore.open(skip_store_dir[0])
    good = np.asarray(store.y_s, dtype=np.float64)[:GOOD]  # [6, 3], no NaN
    targets = np.asarray(store.targets)[:GOOD]
    if mode == "absolute":  # thresholds between the stored values, exact in float32
        levels = [float(np.float32(q)) for q in np.quantile(good, [0.2, 0.5, 0.8])]
        thresholds = [np.full(GOOD, t) for t in levels]
    else:
        levels = [0.25, 0.5, 0.75]
        # the quantiles numpy gives for each image's float32 row, rounded to float32 as the calibration compares
        thresholds = list(np.quantile(good.astype(np.float32), levels, axis=1).astype(np.float32))
    calibration = Calibration(*levels, epsilon=0.1, mode=mode)
    per_image = _expected_counts(good, *thresholds)
    assert per_image.sum() == GOOD * 3
    overall = dict(zip(CATEGORIES, per_image.sum(axis=0).tolist()))
    without = int((per_image[:, 1] + per_image[:, 2] == 0).sum())

    view = calibrate(store, calibration)
    stats = view.stats()
    assert stats["crops"] == GOOD * 3 and stats["counts"] == overall
    assert stats["skipped_images"] == 2 and stats["images_without_kept_crops"] == without
    assert stats["kept_fraction"] == (overall["hard"] + overall["important"]) / (GOOD * 3)
    for label, name in enumerate(store.class_names):
        rows = per_image[targets == label].sum(axis=0)
        assert stats["per_class"][name]["counts"] == dict(zip(CATEGORIES, rows.tolist()))
    assert not view.kept[SKIPPED].any() and view.kept_crops(6).tolist() == []
    with pytest.raises(ValueError, match="image 7 was skipped when the labels were generated"):
        view.labels([0, 7], [0, 1])

    counts = CategoryCounter.for_store(store).counts(calibration)
    assert np.array_equal(counts["per_image"], np.concatenate([per_image, np.zeros((2, 4), np.int64)]))
    assert (counts["images_without_kept_crops"], counts["skipped_images"]) == (without, 2)
    assert dict(zip(CATEGORIES, counts["overall"].tolist())) == overall

    command = ["calibrate", str(store.path), "--t-low", str(levels[0]), "--t-mid", str(levels[1]), "--t-top",
               str(levels[2]), "--mode", mode]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert f"over {GOOD * 3} crops" in printed
    assert f"images with no kept crop: {without}\nskipped images: 2 (undecodable when the labels were " \
           "generated: no labels, not counted above, never trained on)" in printed
    assert main(command + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped_images"] == 2


@pytest.mark.parametrize("recipe", ["fkd", "ferkd"])
def test_training_on_a_skip_store_never_draws_a_skipped_image(skip_store_dir, tmp_path, monkeypatch, recipe):
    from softlab.labels import LabelStore
    from softlab.train import TrainConfig, train
    from softlab.train.loader import MultiCropLoader

    path, root = skip_store_dir
    store = LabelStore.open(path)
    drawn, batch = [], MultiCropLoader.batch

    def recording(self, epoch, step, order=None):
        result = batch(self, epoch, step, order)
        drawn.append((epoch, result.image_index.tolist(), result.crop_index.tolist()))
        return result

    monkeypatch.setattr(MultiCropLoader, "batch", recording)
    # ferkd: thresholds that keep every crop of the decoded images, so that only the skipped ones go untrained
    calibration = {"t_low": 0.0, "t_mid": 0.5, "t_top": 1.0, "epsilon": 0.1, "mode": "absolute"}
    config = TrainConfig(recipe=recipe, out=str(tmp_path), student="tiny_cnn", student_kwargs={"width": 4},
                         input_size=12, epochs=2, batch_images=3, num_crops=2, lr=0.05, eval_data=None,
                         progress=False, seed=3, device="cpu", calibration=calibration if recipe == "ferkd" else None)
    seen = []
    result = train(config, dataset=load_dataset(str(root)), store=store, callbacks=[seen.append])
    assert result.status == "finished" and len(result.history) == 2
    # 8 image visits per epoch, in ceil(8 / 3) = 3 steps of 2 crops per image; none of images 6 and 7
    assert [(epoch, len(images)) for epoch, images, _ in drawn] == [(e, n) for e in (0, 1) for n in (6, 6, 4)]
    visited = [image for _, images, _ in drawn for image in images]
    assert set(visited) <= set(range(GOOD)) and set(visited) == set(range(GOOD))
    note = (f"2 of 8 training images were skipped when the labels were generated (undecodable; listed under "
            f"\"skipped\" in {path / 'manifest.json'}): they have no labels and are never trained on; each epoch "
            "visits the other 6 images once and 2 more drawn at random among them (with replacement), so every "
            "epoch still takes 3 steps over 8 image visits")
    notes = {event.topic: event.text for event in seen if event.kind == "note"}
    assert notes == {"skipped_images": note} and result.extra["notes"] == [note]
    resolved = json.loads((tmp_path / recipe / "config.json").read_text())["resolved"]
    assert (resolved["skipped_images"], resolved["images_without_kept_crops"], resolved["eligible_images"]) == \
        (2, 0, GOOD)
    assert resolved["notes"] == [note]


def test_figures_and_the_explorer_leave_skipped_images_out(skip_store_dir):
    from softlab.calibrate import Calibration, calibrate
    from softlab.labels import LabelStore
    from softlab.viz import ys_histogram_figure
    from softlab.viz.inputs import image_categories
    from softlab.widgets.calibration import CalibrationExplorer

    store_dir, root = skip_store_dir
    store = LabelStore.open(store_dir)
    calibration = Calibration(0.2, 0.5, 0.95)
    histogram = ys_histogram_figure(store, calibration)
    # six decoded images × their crops, each in one category bar: the skipped two are not counted
    assert sum(sum(trace.y) for trace in histogram.data) == 6 * store.num_crops
    assert histogram.layout.title.text == "y_s over 6 images"
    with pytest.raises(ValueError, match=r"image 6 \(dog/x\.jpg\) was skipped when the labels were generated"):
        image_categories(store, 6, calibration)
    explorer = CalibrationExplorer(store, load_dataset(str(root)), calibration=calibration, image=0)
    explorer.image_picker.value = 7
    explorer.refresh()
    assert explorer.message.kind == "warning" and "image 7 (dog/y.jpg) was skipped" in explorer.message.text
    stats = calibrate(store, calibration).stats()
    assert list(explorer.counts["overall"]) == [stats["counts"][name] for name in stats["counts"]]


def test_worker_processes_decode_the_same_store_and_report_bad_images_the_same(skip_store_dir, tmp_path):
    reference, root = skip_store_dir
    data = load_dataset(str(root))
    # fail mode: the bad image stops the run before its chunk, with the message of a run without workers
    with pytest.raises(BadImageError) as info:
        generate_labels(data, LinearTeacher(num_classes=2), tmp_path / "store", workers=2, **SETTINGS)
    assert str(info.value).startswith("cannot decode dog/x.jpg (image 6 of ") and \
        "before writing chunk 1 (images 4-7)" in str(info.value)
    # skip mode resumes it with two decoding processes: the same bytes as the one-process store
    with pytest.warns(SkippedImagesWarning, match="skipped 2 of 8 images"):
        store = generate_labels(data, LinearTeacher(num_classes=2), tmp_path / "store", workers=2,
                                on_bad_image="skip", **SETTINGS)
    for path in sorted(reference.glob("*.npy")):
        assert (store.path / path.name).read_bytes() == path.read_bytes(), path.name
    assert store.skipped == json.loads((reference / "manifest.json").read_text())["skipped"]


@pytest.mark.parametrize("workers", [-1, 1.5, True, "many"])
def test_a_bad_number_of_decoding_workers_is_refused(tmp_path, workers):
    data = load_dataset(str(make_folder(tmp_path / "pics")))
    with pytest.raises(ValueError, match=r"workers must be a whole number >= 0 .* or \"auto\", got "):
        generate_labels(data, LinearTeacher(num_classes=2), tmp_path / "store", workers=workers, **SETTINGS)
    assert not (tmp_path / "store").exists()
