"""FerKD re-categorisation of 1M crops: ``categorise`` against the former boolean-mask implementation.

    python benchmarks/bench_calibrate.py                 # 31,250 × 32 and 2,000 × 500, both modes
    python benchmarks/bench_calibrate.py --repeats 9 --skipped 0.01

For each store shape and mode (absolute thresholds, per-image quantiles), the new :func:`categorise`
(comparisons summed in int8, quantiles read off rows sorted once) and the former implementation (kept below:
``np.quantile(axis=1)`` thresholds, then boolean-mask assignments) run alternately in one process; the script
checks that both give the same categories and prints the median of each and their ratio. Goal: < 50 ms per 1M
crops in each mode.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from softlab.calibrate import Calibration, categorise
from softlab.calibrate.ferkd import DISCARDED_EASY, DISCARDED_HARD, HARD, IMPORTANT, NO_LABEL, check_labelled


def former_thresholds_per_image(y_s: np.ndarray, calibration: Calibration) -> np.ndarray:
    levels = np.array([calibration.t_low, calibration.t_mid, calibration.t_top])
    if calibration.mode == "absolute":
        return np.broadcast_to(levels, (y_s.shape[0], 3))
    return np.quantile(y_s, levels, axis=1).T


def former_categorise(y_s: np.ndarray, calibration: Calibration, skipped: np.ndarray | None = None) -> np.ndarray:
    """The implementation ``categorise`` replaced (the reference): boolean-mask assignments."""
    y_s = np.asarray(y_s, dtype=np.float32)
    skipped = None if skipped is None or not np.any(skipped) else np.asarray(skipped, dtype=bool)
    check_labelled(y_s, skipped)
    if skipped is not None:
        categories = np.full(y_s.shape, NO_LABEL, dtype=np.int8)
        categories[~skipped] = former_categorise(y_s[~skipped], calibration)
        return categories
    t = former_thresholds_per_image(y_s, calibration).astype(np.float32)
    low, mid, top = t[:, :1], t[:, 1:2], t[:, 2:3]
    categories = np.full(y_s.shape, IMPORTANT, dtype=np.int8)
    categories[y_s < mid] = HARD
    categories[y_s < low] = DISCARDED_HARD
    categories[y_s > top] = DISCARDED_EASY
    return categories


def y_s_like_a_store(images: int, crops: int, skipped_fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Beta-distributed y_s (mostly confident, a tail of hard crops), stored at 1/256 resolution (many ties)."""
    y_s = (np.round(rng.beta(2.0, 0.7, size=(images, crops)) * 256) / 256).astype(np.float32)
    skipped = rng.random(images) < skipped_fraction
    y_s[skipped] = np.nan
    return y_s, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="31250x32,2000x500", help="images×crops, comma-separated")
    parser.add_argument("--repeats", type=int, default=7, help="alternated runs of each (median reported; ≥ 5)")
    parser.add_argument("--skipped", type=float, default=0.0, help="fraction of images skipped at generation")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    settings = {"absolute": Calibration(0.05, 0.3, 0.99), "quantile": Calibration(0.1, 0.3, 0.9, mode="quantile")}
    print(f"{'store':>14} {'mode':>9} {'new ms':>8} {'former ms':>10} {'ratio':>7}")
    for shape in args.shapes.split(","):
        images, crops = (int(n) for n in shape.split("x"))
        y_s, skipped = y_s_like_a_store(images, crops, args.skipped, rng)
        for mode, calibration in settings.items():
            assert np.array_equal(categorise(y_s, calibration, skipped),
                                  former_categorise(y_s, calibration, skipped)), (shape, mode)
            times = {"new": [], "former": []}
            for _ in range(args.repeats):
                for name, fn in (("new", categorise), ("former", former_categorise)):
                    started = time.perf_counter()
                    fn(y_s, calibration, skipped)
                    times[name].append(time.perf_counter() - started)
            new, former = (1e3 * float(np.median(times[name])) for name in ("new", "former"))
            print(f"{images:>7}×{crops:<6} {mode:>9} {new:8.1f} {former:10.1f} {former / new:6.1f}×")


if __name__ == "__main__":
    main()
