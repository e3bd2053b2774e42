import json
from pathlib import Path

import numpy as np
import pytest
import torch

from softlab.labels import LabelStore, StoreError, generate_labels
from softlab.labels.fkd import export_fkd, import_fkd, load_fkd_file
from tiny import LinearTeacher, NoiseImages

TYPES = ["hard", "smoothing", "marginal_smoothing_k3", "marginal_renorm_k4"]


@pytest.mark.parametrize("fp16", [False, True])
@pytest.mark.parametrize("label_type", TYPES)
def test_export_import_round_trip(tmp_path, label_type, fp16):
    store = generate_labels(NoiseImages(count=9), LinearTeacher(), tmp_path / "s", num_crops=4,
                            label_type=label_type, progress=False)
    export_fkd(store, tmp_path / "fkd", fp16=fp16, progress=False)
    back = import_fkd(tmp_path / "fkd", tmp_path / "back", label_type=label_type, progress=False)
    order = [back.image_ids.index(f"{store.class_names[int(t)]}/{image_id}")
             for image_id, t in zip(store.image_ids, store.targets)]
    images, crops = np.repeat(np.arange(9), 4), np.tile(np.arange(4), 9)
    torch.testing.assert_close(back.labels(np.repeat(order, 4), crops), store.labels(images, crops), rtol=0, atol=0)
    np.testing.assert_array_equal(back.coords[order], store.coords[:])
    np.testing.assert_array_equal(back.flip[order], store.flip[:])
    np.testing.assert_array_equal(back.targets[order], store.targets[:])
    assert back.class_names == store.class_names and back.label_type == store.label_type
    # imported y_s is the ground-truth probability of the recovered dense label
    dense = back.labels(images, crops).reshape(9, 4, -1)
    expected = np.take_along_axis(dense.numpy(), np.asarray(back.targets)[:, None, None].repeat(4, 1), 2)[..., 0]
    # same fp32 formula on the same fp16 values; atol: 1 − Σ top-k loses relative precision when Σ nears 1
    np.testing.assert_allclose(back.y_s[:], expected, rtol=1e-6, atol=1e-7)


def test_exported_files_follow_fkds_layout(tmp_path):
    store = generate_labels(NoiseImages(count=3), LinearTeacher(), tmp_path / "s", num_crops=4,
                            label_type="marginal_smoothing_k3", progress=False)
    export_fkd(store, tmp_path / "fkd", fp16=True, progress=False)
    files = sorted((tmp_path / "fkd" / "train").rglob("*.tar"))
    assert [f.relative_to(tmp_path / "fkd" / "train").as_posix() for f in files] == \
        ["c0/00000000.tar", "c1/00000001.tar", "c2/00000002.tar"]
    content = torch.load(files[1], weights_only=False)  # FKD's own reader
    coords, flip, labels = content
    assert coords.dtype == np.float16 and coords.shape == (4, 4)
    assert flip.dtype == np.bool_ and labels.shape == (4, 2, 3) and labels.dtype == np.float16
    np.testing.assert_array_equal(labels[:, 0, :], store.topk_idx[1].astype(np.float16))


def test_import_hand_made_fkd_files(tmp_path):
    root = tmp_path / "zoo" / "train"
    for class_dir, stem, index in (("n01", "a", 0), ("n02", "b", 2)):
        (root / class_dir).mkdir(parents=True)
        coords = np.array([[0.0, 0.25, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]], dtype=np.float32)
        labels = np.array([[[index, 1], [0.5, 0.25]], [[1, index], [0.75, 0.125]]], dtype=np.float32)
        torch.save([coords, np.array([True, False]), labels], root / class_dir / f"{stem}.tar")
    store = import_fkd(tmp_path / "zoo", tmp_path / "store", num_classes=4, progress=False)
    assert store.image_ids == ["n01/a", "n02/b"] and store.targets.tolist() == [0, 1]
    assert store.label_type.name == "marginal_smoothing_k2"
    # image 1 (class dir n02 → target 1), crop 0: 0.5 on class 2, 0.25 on class 1, (1 - 0.75) / 2 on classes 0 and 3
    assert store.labels([1], [0]).tolist() == [[0.125, 0.25, 0.5, 0.125]]
    assert store.y_s[1, 0] == 0.25 and store.flip[0].tolist() == [True, False]
    renorm = import_fkd(tmp_path / "zoo", tmp_path / "renorm", num_classes=4, label_type="marginal_renorm_k2",
                        progress=False)
    torch.testing.assert_close(renorm.labels([0], [1]), torch.tensor([[0.125 / 0.875, 0.75 / 0.875, 0, 0]]))


def test_import_matches_a_dataset_and_reports_disagreement(tmp_path):
    from softlab.data import ImageFolderDataset
    from PIL import Image

    for class_dir in ("cat", "dog"):
        (tmp_path / "images" / class_dir).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / class_dir / "x.png")
        (tmp_path / "fkd" / "train" / class_dir).mkdir(parents=True)
        torch.save([np.zeros((2, 4), np.float32), np.zeros(2, bool), np.array([0, 1])],
                   tmp_path / "fkd" / "train" / class_dir / "x.tar")
    dataset = ImageFolderDataset(tmp_path / "images")
    store = import_fkd(tmp_path / "fkd", tmp_path / "store", dataset=dataset, progress=False)
    assert store.image_ids == ["cat/x", "dog/x"] and store.label_type.name == "hard"
    (tmp_path / "fkd" / "train" / "dog" / "x.tar").rename(tmp_path / "fkd" / "train" / "dog" / "y.tar")
    with pytest.raises(StoreError, match="1 images have no .tar"):
        import_fkd(tmp_path / "fkd", tmp_path / "store2", dataset=dataset, progress=False)


def test_reading_refuses_arbitrary_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save([Evil(), 1, 2], tmp_path / "evil.tar")
    with pytest.raises(StoreError, match="not a readable FKD soft-label file"):
        load_fkd_file(tmp_path / "evil.tar")


def test_inconsistent_files_are_reported(tmp_path):
    root = tmp_path / "zoo" / "train" / "c"
    root.mkdir(parents=True)
    torch.save([np.zeros((3, 4), np.float32), np.zeros(3, bool), np.zeros((3, 2, 5), np.float32)], root / "a.tar")
    torch.save([np.zeros((2, 4), np.float32), np.zeros(2, bool), np.zeros((2, 2, 5), np.float32)], root / "b.tar")
    with pytest.raises(StoreError, match="has 2 crops; the other files have 3"):
        import_fkd(tmp_path / "zoo", tmp_path / "s", num_classes=10, progress=False)
    with pytest.raises(StoreError, match="no FKD .tar"):
        import_fkd(tmp_path / "s-missing", tmp_path / "s2", progress=False)


def test_full_labels_cannot_be_exported(tmp_path):
    store = generate_labels(NoiseImages(count=2), LinearTeacher(), tmp_path / "s", num_crops=2, label_type="full",
                            progress=False)
    with pytest.raises(StoreError, match="no 'full' label type"):
        export_fkd(store, tmp_path / "fkd", progress=False)


def _fkd_image_folder(root, names):
    """``<root>/train/<class>/<name>`` small RGB images, as FKD's ImageNet folders are laid out."""
    rng = np.random.default_rng(1)
    from PIL import Image

    for name in names:
        path = root / "train" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(path)
    return root / "train"


def _fkd_label_path(softlabel_path, image_path):
    # FKD's trainer (ImageFolder_FKD_MIX.__getitem__): the last three path parts, cut at the first dot, + '.tar'
    import os

    return os.path.join(str(softlabel_path), "/".join(str(image_path).split("/")[-3:]).split(".")[0] + ".tar")


def test_files_are_named_the_way_fkds_trainer_looks_for_them(tmp_path):
    from softlab.data import ImageFolderDataset

    train = _fkd_image_folder(tmp_path / "imagenet", ["cat/a.b.png", "cat/c.png", "dog/d.e.f.jpg"])
    dataset = ImageFolderDataset(train)
    store = generate_labels(dataset, LinearTeacher(num_classes=2), tmp_path / "s", num_crops=3,
                            label_type="marginal_smoothing_k1", progress=False, device="cpu")
    assert store.image_ids == ["cat/a.b", "cat/c", "dog/d.e.f"]  # image ids keep their stems, as before
    assert export_fkd(store, tmp_path / "fkd", progress=False) == 3
    written = sorted(p.relative_to(tmp_path / "fkd").as_posix() for p in (tmp_path / "fkd").rglob("*.tar"))
    assert written == ["train/cat/a.tar", "train/cat/c.tar", "train/dog/d.tar"]
    for image_path, _ in dataset.dataset.samples:  # where FKD's trainer will look for each image's labels
        assert Path(_fkd_label_path(tmp_path / "fkd", image_path)).is_file(), image_path

    back = import_fkd(tmp_path / "fkd", tmp_path / "back", dataset=dataset, progress=False)
    assert back.image_ids == store.image_ids and back.targets.tolist() == store.targets.tolist()
    np.testing.assert_array_equal(back.coords[:], store.coords[:])
    np.testing.assert_array_equal(back.topk_idx[:], store.topk_idx[:])
    np.testing.assert_array_equal(back.topk_prob[:], store.topk_prob[:])


def test_files_of_an_older_export_still_match_their_images(tmp_path):
    # earlier exports kept all but the last suffix of an image's name (cat/a.b.tar for cat/a.b.c.png)
    from softlab.data import ImageFolderDataset

    dataset = ImageFolderDataset(_fkd_image_folder(tmp_path / "images", ["cat/a.b.c.png", "dog/e.png"]))
    for key in ("cat/a.b", "dog/e"):
        (tmp_path / "fkd" / "train" / key).parent.mkdir(parents=True, exist_ok=True)
        torch.save([np.zeros((2, 4), np.float32), np.zeros(2, bool), np.array([0, 1])],
                   tmp_path / "fkd" / "train" / f"{key}.tar")
    store = import_fkd(tmp_path / "fkd", tmp_path / "store", dataset=dataset, progress=False)
    assert store.image_ids == ["cat/a.b.c", "dog/e"]


def test_two_images_sharing_an_fkd_file_name_are_an_error(tmp_path):
    from softlab.data import ImageFolderDataset

    dataset = ImageFolderDataset(_fkd_image_folder(tmp_path / "images", ["cat/a.b.png", "cat/a.c.png", "dog/d.png"]))
    store = generate_labels(dataset, LinearTeacher(num_classes=2), tmp_path / "s", num_crops=2, label_type="hard",
                            progress=False, device="cpu")
    with pytest.raises(StoreError, match=r"images 'cat/a\.b' and 'cat/a\.c' both map to FKD's label file cat/a\.tar"):
        export_fkd(store, tmp_path / "fkd", progress=False)
    assert not (tmp_path / "fkd").exists()  # nothing was written, nothing overwritten
    for key in ("cat/a", "dog/d"):
        (tmp_path / "zoo" / "train" / key).parent.mkdir(parents=True, exist_ok=True)
        torch.save([np.zeros((2, 4), np.float32), np.zeros(2, bool), np.array([0, 1])],
                   tmp_path / "zoo" / "train" / f"{key}.tar")
    with pytest.raises(StoreError, match=r"images 'cat/a\.b' and 'cat/a\.c' both map to FKD's label file cat/a\.tar"):
        import_fkd(tmp_path / "zoo", tmp_path / "back", dataset=dataset, progress=False)
    torch.save([np.zeros((2, 4), np.float32), np.zeros(2, bool), np.array([0, 1])],
               tmp_path / "zoo" / "train" / "dog" / "d.x.tar")
    single = ImageFolderDataset(_fkd_image_folder(tmp_path / "one", ["cat/a.png", "dog/d.png"]))
    with pytest.raises(StoreError, match=r"FKD files 'dog/d' and 'dog/d\.x' both map to FKD's label file dog/d\.tar"):
        import_fkd(tmp_path / "zoo", tmp_path / "back2", dataset=single, progress=False)


def test_reading_files_in_worker_processes_gives_the_same_store_and_errors(tmp_path):
    store = generate_labels(NoiseImages(count=23), LinearTeacher(), tmp_path / "s", num_crops=4,
                            label_type="marginal_smoothing_k3", progress=False)
    export_fkd(store, tmp_path / "fkd", fp16=True, progress=False)
    one = import_fkd(tmp_path / "fkd", tmp_path / "one", workers=0, chunk_size=5, progress=False)
    two = import_fkd(tmp_path / "fkd", tmp_path / "two", workers=2, chunk_size=5, progress=False)
    for path in sorted(one.path.glob("*.npy")):
        assert (two.path / path.name).read_bytes() == path.read_bytes(), path.name
    # a file with another crop count, read by a worker, stops the import with the message it gives without workers
    bad = sorted((tmp_path / "fkd" / "train").rglob("*.tar"))[17]
    torch.save([np.zeros((2, 4), np.float32), np.zeros(2, bool), np.zeros((2, 2, 3), np.float32)], bad)
    with pytest.raises(StoreError, match=f"{bad} has 2 crops; the other files have 4"):
        import_fkd(tmp_path / "fkd", tmp_path / "three", workers=2, chunk_size=5, progress=False)
    with pytest.raises(ValueError, match="workers must be a whole number >= 0"):
        import_fkd(tmp_path / "fkd", tmp_path / "four", workers=-2, progress=False)
    assert not (tmp_path / "four").exists()
