"""Small deterministic stand-ins shared by the tests (a real Teacher is exercised in the end-to-end tests)."""
import numpy as np
import torch

from softlab.data import ImageDataset
from torchvision import tv_tensors


class LinearTeacher(torch.nn.Module):
    """Duck-typed teacher: a seeded linear map from 1×12×12 crops to C logits."""

    spec = "test:linear"
    input_size = (1, 12, 12)

    def __init__(self, num_classes=6, seed=0, scale=8.0):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = torch.nn.Linear(144, num_classes)
        self.scale = scale
        self.num_classes = num_classes
        self.class_names = [f"c{i}" for i in range(num_classes)]

    def forward(self, x):
        return self.linear(x.mean(dim=1, keepdim=True).flatten(1)) * self.scale

    def describe(self):
        return {"spec": self.spec, "weights_sha256": None, "input_size": list(self.input_size)}


class NoiseImages(ImageDataset):
    """Seeded random uint8 images of varying sizes with cyclic targets."""

    def __init__(self, count=23, num_classes=6, seed=0, channels=1):
        super().__init__(name=f"noise{count}", classes=[f"c{i}" for i in range(num_classes)],
                         targets=np.arange(count) % num_classes, default_crops=5)
        rng = np.random.default_rng(seed)
        self.images = [rng.integers(0, 256, size=(channels, 16 + i % 5, 20 - i % 3), dtype=np.uint8)
                       for i in range(count)]

    def load_image(self, index):
        return tv_tensors.Image(torch.from_numpy(self.images[index]))


def clear_argmax(scores, margin):
    """(argmax, clear) of ``scores [N, C]``: ``clear`` marks rows whose top-2 gap exceeds ``margin``.

    Two fp32 evaluations of the same network (another batch shape, thread count, BLAS or instruction set) differ
    by rounding noise, so their argmax may only be compared where the top two are further apart than that noise.
    """
    top = scores.topk(2, dim=-1).values
    return scores.argmax(dim=-1), (top[..., 0] - top[..., 1]) > margin


def correct_count_bounds(scores, targets, margin):
    """(fewest, most) correct top-1 predictions that any evaluation within ``margin`` of ``scores`` can have:
    rows whose top two lie within ``margin`` may go either way."""
    predicted, clear = clear_argmax(scores, margin)
    fewest = int(((predicted == targets) & clear).sum())
    return fewest, fewest + int((~clear).sum())


TINY_CALIBRATION = {"t_low": 0.02, "t_mid": 0.2, "t_top": 0.98, "epsilon": 0.1, "mode": "absolute"}


def tiny_config(tmp_path, recipe="fkd", **changes):
    """A TrainConfig for a few-second CPU run on 24 NoiseImages: tiny_cnn (width 4) at 12 px, 6 images × 2 crops
    per step, 1 epoch, no evaluation; ``ferkd`` gets :data:`TINY_CALIBRATION`."""
    from softlab.train import TrainConfig

    settings = dict(recipe=recipe, out=str(tmp_path), student="tiny_cnn", student_kwargs={"width": 4}, input_size=12,
                    epochs=1, batch_images=6, num_crops=2, lr=0.05, eval_data=None, progress=False,
                    calibration=TINY_CALIBRATION if recipe == "ferkd" else None, seed=3, device="cpu")
    return TrainConfig(**{**settings, **changes})


def write_image_folder(root, count: int, classes: int = 3, height=(24, 7), width=(30, 5), seed: int = 0) -> None:
    """``count`` random PNGs in ``root/class<k>/img<i>.png`` (image i in class i % classes), of varied sizes:
    image i is ``height[0] + i % height[1]`` × ``width[0] - i % width[1]`` pixels (a folder data set to label)."""
    from pathlib import Path

    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = Path(root) / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(height[0] + i % height[1], width[0] - i % width[1], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
