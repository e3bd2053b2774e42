"""Time to build the crop-box, hard-region-mask and y_s-histogram figures for one 512×512 image with 500 crops.

The store is real FKD crop sampling (RandomResizedCrop, scale (0.08, 0.936)) on a synthetic 512×512 photo of a
bright disc on a dark background, labelled by a stand-in teacher whose ground-truth probability grows with the
share of the disc in the crop, so y_s follows the object as a real teacher's does. Figures are built (not
rendered); the mask figure computes its mask on a 128-cell grid, its display resolution. The reference is the mean-y_s
mask computed by a per-pixel Python loop, timed on a 32×32 patch and scaled to the full image.

    python benchmarks/bench_viz.py [--repeats 15] [--crops 500] [--size 512]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from torchvision import tv_tensors

from softlab.calibrate import Calibration
from softlab.data import ImageDataset
from softlab.data.crops import pixel_boxes
from softlab.labels import generate_labels
from softlab.viz import crop_boxes_figure, hard_region_figure, image_mask, ys_histogram_figure
from softlab.viz.inputs import image_categories, image_y_s

CALIBRATION = Calibration(t_low=0.05, t_mid=0.3, t_top=0.99)
CLASSES = ["disc", "background"] + [f"other {k}" for k in range(8)]


class DiscImage(ImageDataset):
    """One RGB image: a bright disc (the object, class 0) off-centre on a dark textured background."""

    def __init__(self, size: int):
        super().__init__(name=f"disc{size}", classes=CLASSES, targets=np.array([0]))
        rows, cols = np.mgrid[:size, :size]
        disc = (rows - 0.45 * size) ** 2 + (cols - 0.6 * size) ** 2 < (0.22 * size) ** 2
        noise = np.random.default_rng(0).integers(0, 60, size=(size, size))
        grey = np.where(disc, 200 + noise // 2, noise).astype(np.uint8)
        self.image = torch.from_numpy(np.stack([grey, grey // 2 + 40 * disc, grey // 3]).astype(np.uint8))

    def load_image(self, index):
        return tv_tensors.Image(self.image)


class BrightnessTeacher(torch.nn.Module):
    """Logit of "disc" grows with the crop's brightness; enough to give object-shaped y_s."""

    spec = "bench:brightness"
    input_size = (3, 16, 16)
    num_classes = len(CLASSES)
    class_names = CLASSES

    def forward(self, crops):
        bright = crops.mean(dim=(1, 2, 3))
        others = -torch.arange(1, len(CLASSES) - 1, dtype=crops.dtype) / 2
        return torch.cat([12 * (bright[:, None] - 0.2), torch.zeros_like(bright)[:, None],
                          others.expand(len(crops), -1)], dim=1)

    def describe(self):
        return {"spec": self.spec, "weights_sha256": None, "input_size": list(self.input_size)}


def build_figures(image, store, index: int = 0) -> None:
    crop_boxes_figure(image, store, index, CALIBRATION)
    hard_region_figure(image, store, index, CALIBRATION)
    ys_histogram_figure(store, CALIBRATION, index=index)


def median_ms(action, repeats: int) -> float:
    action()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def loop_mask(boxes, y_s, rows, cols) -> np.ndarray:
    """Mean y_s per pixel by a Python loop over pixels (the reference)."""
    out = np.full((len(rows), len(cols)), np.nan)
    for a, row in enumerate(rows):
        for b, col in enumerate(cols):
            inside = ((boxes[:, 0] <= row) & (row < boxes[:, 0] + boxes[:, 2]) & (boxes[:, 1] <= col)
                      & (col < boxes[:, 1] + boxes[:, 3]))
            if inside.any():
                out[a, b] = y_s[inside].mean()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--crops", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    data = DiscImage(args.size)
    with tempfile.TemporaryDirectory() as folder:
        store = generate_labels(data, BrightnessTeacher(), f"{folder}/store", num_crops=args.crops, progress=False)
        image = data[0][0]
        size = args.size
        boxes = pixel_boxes(store.coords[0], size, size)
        y_s = image_y_s(store, 0)
        timings = {
            "boxes figure": median_ms(lambda: crop_boxes_figure(image, store, 0, CALIBRATION), args.repeats),
            "mask data, every pixel": median_ms(lambda: image_mask(image, store, 0, CALIBRATION, grid=None),
                                                args.repeats),
            "mask data, 256-cell grid": median_ms(lambda: image_mask(image, store, 0, CALIBRATION), args.repeats),
            "mask figure (data included)": median_ms(lambda: hard_region_figure(image, store, 0, CALIBRATION),
                                                     args.repeats),
            "y_s histogram figure": median_ms(lambda: ys_histogram_figure(store, CALIBRATION, index=0), args.repeats),
            "recategorise (slider step)": median_ms(lambda: image_categories(store, 0, CALIBRATION), args.repeats),
        }
        total = median_ms(lambda: build_figures(image, store), args.repeats)
        patch = np.arange(32) * (size // 32)
        start = time.perf_counter()
        loop_mask(boxes, y_s, patch, patch)
        loop_ms = 1000 * (time.perf_counter() - start) * (size * size) / (32 * 32)
        mask_ms = timings["mask data, every pixel"]
    print(f"one {size}×{size} image, {args.crops} crops, median of {args.repeats} runs")
    for name, value in timings.items():
        print(f"  {name:30s} {value:8.2f} ms")
    print(f"  {'boxes + mask + histogram':30s} {total:8.2f} ms   (goal < 50 ms)")
    print(f"reference: per-pixel Python-loop mask (mean y_s only), scaled from 32×32: {loop_ms:.0f} ms")
    print(f"ratio: the vectorised every-pixel mask is {loop_ms / mask_ms:.0f}× faster than the loop; "
          f"all three figures take {total / loop_ms:.4f}× the loop's time")


if __name__ == "__main__":
    main()
