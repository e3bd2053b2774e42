import numpy as np
import pytest
import torch
from PIL import Image

from softlab.data import (FASHION_MNIST_CLASSES, ImageFolderDataset, MissingDatasetError, WrappedDataset,
                          fashion_mnist, load_dataset)


def test_fashion_mnist_from_the_debian_package():
    train = load_dataset("fashion-mnist")
    assert len(train) == 60000 and train.classes == FASHION_MNIST_CLASSES
    image, target = train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8
    assert target == 9  # the first training image is an ankle boot
    assert np.bincount(train.targets).tolist() == [6000] * 10
    assert len(load_dataset("fashion-mnist:test")) == 10000


def test_fashion_mnist_from_a_given_folder_of_idx_files(tmp_path):
    header = (2051).to_bytes(4, "big") + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (4).to_bytes(4, "big")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(header + bytes(range(24)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes((2049).to_bytes(4, "big") + (2).to_bytes(4, "big") + b"\x03\x07")
    data = fashion_mnist("train", root=tmp_path)
    assert data.targets.tolist() == [3, 7]
    assert data[1][0].flatten().tolist() == list(range(12, 24))


def test_missing_fashion_mnist_names_the_ways_to_get_it(tmp_path):
    with pytest.raises(MissingDatasetError) as error:
        fashion_mnist("train", root=tmp_path)
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message and "download=True" in message and str(tmp_path) in message


def test_photo_pack_reads_labelled_imagenet_photos_from_installed_packages():
    photos = load_dataset("photos")
    assert len(photos) == 20 and photos.num_classes == 1000
    assert photos.image_id(0) == "foolbox/imagenet_00_243.jpg" and photos.targets[0] == 243
    assert "bull mastiff" in photos.classes[243]
    image, _ = photos[0]
    assert image.shape[0] == 3 and image.dtype == torch.uint8
    everything = load_dataset("photos:all")
    assert len(everything) == 27 and (everything.targets[20:] == -1).all()
    assert everything[20][0].shape == (3, 300, 451)  # scikit-image's chelsea


def test_any_torchvision_style_dataset_and_image_folders(tmp_path):
    from torchvision.datasets import FakeData

    raw = FakeData(size=5, image_size=(3, 10, 12), num_classes=3, random_offset=0)  # seeded per index
    fake = WrappedDataset(raw, name="fake")
    image, target = fake[2]
    assert image.shape == (3, 10, 12) and image.dtype == torch.uint8
    raw_image, raw_target = raw[2]
    assert target == int(raw_target)
    assert torch.equal(image.as_subclass(torch.Tensor), torch.from_numpy(np.array(raw_image)).permute(2, 0, 1))
    for class_dir in ("cat", "dog"):
        (tmp_path / class_dir).mkdir()
        Image.new("L", (6, 4), color=128).save(tmp_path / class_dir / "a.png")
    folder = load_dataset(str(tmp_path))
    assert isinstance(folder, ImageFolderDataset) and folder.classes == ["cat", "dog"]
    assert folder.image_id(1) == "dog/a" and folder[1][0].shape == (3, 4, 6)


def test_fingerprint_changes_with_content_and_subset():
    data = load_dataset("fashion-mnist:test")
    assert data.fingerprint() == load_dataset("fashion-mnist:test").fingerprint()
    assert data.subset(range(10)).fingerprint() != data.subset(range(1, 11)).fingerprint()


def test_unknown_dataset_and_bad_limit():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="limit must be positive"):
        load_dataset("photos", limit=0)
    with pytest.raises(IndexError, match="out of range"):
        load_dataset("photos")[99]


def test_folders_without_the_image_folder_layout_say_what_is_expected(tmp_path):
    from softlab.data import MissingDatasetError

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"image folder .*empty has no class sub-folders; expected "
                                                r"<root>/<class_dir>/<image files>"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "texts" / "cat").mkdir(parents=True)
    (tmp_path / "texts" / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=r"texts has no image files in its class sub-folders"):
        load_dataset(str(tmp_path / "texts"))
    (tmp_path / "photo.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"photo\.png is a file, not an image folder"):
        load_dataset(str(tmp_path / "photo.png"))
    with pytest.raises(MissingDatasetError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nowhere")
