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
