"""FerKD calibration of region soft labels (a lazy, vectorised view over a label store)."""
from .ferkd import (CATEGORIES, Calibration, CalibratedStore, calibrate, categorise, softened_hard_labels,
                    thresholds_per_image)
from .counts import CategoryCounter, sorted_row_quantiles

__all__ = ["CATEGORIES", "Calibration", "CalibratedStore", "calibrate", "categorise", "softened_hard_labels",
           "thresholds_per_image", "CategoryCounter", "sorted_row_quantiles"]
