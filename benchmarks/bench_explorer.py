"""Python time per change of the CalibrationExplorer: a threshold moved → counts, four figures, messages.

Two stores, each timed through the widget itself (a slider's value is set, the debounced refresh runs at once
because no event loop runs here), with widget messages serialised to JSON as a kernel would (buffers counted):

- one 512×512 photo-like image with 500 FKD crops (the per-image figures dominate);
- 60,000 images × 32 crops, Fashion-MNIST sized (the store-wide and per-class counts dominate).

The issue's case, an image with 500 crops on a 60k × 32 store, costs the per-image part of the first plus the
store-wide part of the second; both are printed. The reference, timed in the same run, is what a change costs
without the explorer's machinery: the library's ``CalibratedStore(...).stats()`` for the counts plus building
the same four figures as new ``FigureWidget``s.

    python benchmarks/bench_explorer.py [--repeats 30] [--images 60000]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from torchvision import tv_tensors

sys.path.insert(0, str(Path(__file__).parent))
from bench_viz import BrightnessTeacher, DiscImage  # noqa: E402

from softlab.calibrate import Calibration, CalibratedStore  # noqa: E402
from softlab.data import ImageDataset  # noqa: E402
from softlab.data.crops import CropParams  # noqa: E402
from softlab.labels import LabelStore, generate_labels  # noqa: E402
from softlab.labels.generate import build_manifest  # noqa: E402
from softlab.widgets import CalibrationExplorer  # noqa: E402

SETTINGS = [Calibration(0.05, 0.3, 0.99), Calibration(0.08, 0.35, 0.98), Calibration(0.1, 0.3, 0.95, mode="quantile"),
            Calibration(0.15, 0.4, 0.9, mode="quantile")]


def serialise_widget_messages() -> None:
    """Make every widget message pay for its JSON encoding, as the kernel's session would."""
    import comm
    from comm.base_comm import BaseComm

    class JsonComm(BaseComm):
        sent_bytes = 0

        def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
            JsonComm.sent_bytes += len(json.dumps(data, default=str)) + sum(len(memoryview(b)) for b in buffers or ())

    comm.create_comm = lambda **kwargs: JsonComm(**kwargs)


class SmallImages(ImageDataset):
    """``count`` 28×28 grey images made on demand (a Fashion-MNIST-sized stand-in)."""

    def __init__(self, count: int, num_classes: int = 10):
        super().__init__(name=f"small{count}", classes=[f"class {k}" for k in range(num_classes)],
                         targets=np.arange(count) % num_classes)

    def load_image(self, index):
        rng = np.random.default_rng(index)
        return tv_tensors.Image(torch.from_numpy(rng.integers(0, 256, (1, 28, 28), dtype=np.uint8)))


class StandIn:
    spec, input_size, num_classes = "bench:random", (1, 28, 28), 10

    def describe(self):
        return {"spec": self.spec, "weights_sha256": None, "input_size": list(self.input_size)}


def synthetic_store(folder: Path, dataset: SmallImages, crops: int) -> LabelStore:
    """A complete store of random but well-formed labels (y_s skewed like a good teacher's)."""
    manifest = build_manifest(dataset, StandIn(), crops, "marginal_smoothing_k5", 1.0, CropParams(), 0, 4096)
    store = LabelStore.create(folder, manifest, [f"{k:08d}" for k in range(len(dataset))], dataset.targets)
    rng = np.random.default_rng(0)
    for chunk in range(store.num_chunks):
        start, stop = store.chunk_bounds(chunk)
        n = stop - start
        probs = rng.dirichlet(np.full(10, 0.3), size=(n, crops)).astype(np.float32)
        order = np.argsort(-probs, axis=-1)[..., :5]
        targets = np.broadcast_to(dataset.targets[start:stop, None, None], (n, crops, 1))
        store.write_chunk(chunk, {"coords": rng.uniform(0, 0.5, (n, crops, 4)), "flip": rng.random((n, crops)) < 0.5,
                                  "topk_idx": order, "topk_prob": np.take_along_axis(probs, order, -1),
                                  "y_s": np.take_along_axis(probs, targets, -1)[..., 0],
                                  "entropy": -(probs * np.log(probs + 1e-12)).sum(-1)})
    store.finalize()
    return LabelStore.open(folder)


def time_changes(explorer: CalibrationExplorer, repeats: int) -> list[float]:
    explorer.calibration = SETTINGS[0]
    times = []
    for step in range(repeats):
        setting = SETTINGS[(step + 1) % len(SETTINGS)]
        started = time.perf_counter()
        explorer.calibration = setting
        times.append(1000 * (time.perf_counter() - started))
    return times


def reference_change(store, dataset, calibration: Calibration, index: int) -> None:
    from softlab.viz import category_share_figure, crop_boxes_figure, hard_region_figure, ys_histogram_figure

    stats = CalibratedStore(store, calibration).stats()
    image = dataset[index][0]
    for figure in (crop_boxes_figure(image, store, index, calibration, max_boxes=60),
                   hard_region_figure(image, store, index, calibration, statistics=["local_y_s"]),
                   ys_histogram_figure(store, calibration, index),
                   category_share_figure({"all": list(stats["counts"].values())})):
        go.FigureWidget(figure)


def time_reference(store, dataset, repeats: int) -> list[float]:
    times = []
    for step in range(repeats):
        started = time.perf_counter()
        reference_change(store, dataset, SETTINGS[(step + 1) % len(SETTINGS)], 0)
        times.append(1000 * (time.perf_counter() - started))
    return times


def summary(times: list[float]) -> str:
    return f"median {statistics.median(times):7.1f} ms   p95 {np.percentile(times, 95):7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--images", type=int, default=60000)
    parser.add_argument("--crops", type=int, default=32)
    args = parser.parse_args()
    serialise_widget_messages()
    with tempfile.TemporaryDirectory() as folder:
        disc = DiscImage(512)
        photo_store = generate_labels(disc, BrightnessTeacher(), f"{folder}/disc", num_crops=500, progress=False)
        small = SmallImages(args.images)
        big_store = synthetic_store(Path(folder) / "big", small, args.crops)
        rows = []
        for name, store, dataset in (("1 image × 500 crops (512×512)", photo_store, disc),
                                     (f"{args.images} images × {args.crops} crops", big_store, small)):
            explorer = CalibrationExplorer(store=store, dataset=dataset, calibration=SETTINGS[0])
            widget = time_changes(explorer, args.repeats)
            reference = time_reference(store, dataset, max(5, args.repeats // 3))
            rows.append((name, widget, reference))
    print(f"CalibrationExplorer: Python time per threshold change ({args.repeats} changes, absolute and quantile "
          "settings alternated)")
    for name, widget, reference in rows:
        ratio = statistics.median(reference) / statistics.median(widget)
        print(f"  {name:34s} widget {summary(widget)}   reference {summary(reference)}   "
              f"widget is {ratio:.1f}× faster")
    combined = [a + b for a, b in zip(rows[0][1], rows[1][1])]
    print(f"  {'both (an upper bound for 500 crops on 60k × 32)':34s} widget {summary(combined)}   (goal < 100 ms)")


if __name__ == "__main__":
    main()
