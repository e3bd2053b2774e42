"""Figures for every stage, as plotly figures: crops, hard-region masks, soft labels, attributions, training.

Pure data functions (``hard_region_mask``, ``category_counts``, ``histogram_data``, ``non_target_mass``, …) are
kept apart from the figure builders, which are cheap (one trace per category, not per crop) so that a widget can
recompute a calibration and redraw in milliseconds. Nothing here imports ipywidgets: widgets, notebooks and
HTML reports draw the same figures.
"""
from .colors import CATEGORY_COLORS, CATEGORY_LABELS, category_color, category_colorscale, category_legend
from .masks import box_min, box_sums, hard_region_mask, pixel_map
from .stats import category_counts, histogram_data, non_target_mass, top_classes, topk_label_data
from .crops import box_outlines, crop_boxes_figure, crop_grid_figure, crop_pixels, spread_by_y_s
from .regions import MASK_STATISTICS, hard_region_figure, image_mask
from .labels import entropy_histogram_figure, non_target_mass_figure, topk_bars_figure, ys_histogram_figure
from .attributions import (ATTRIBUTION_METHODS, attribution_figure, attribution_maps, crop_attribution_figure,
                           grad_cam, integrated_gradients, last_feature_layer, occlusion, teacher_crop)
from .training import accuracy_curves, comparison_bars, expected_calibration_error, reliability_diagram
from .report import report_html, write_report
from .augment import crop_preview_figure, mixed_preview_figure
from .teachers import teacher_predictions_figure
from .shares import category_share_figure, category_shares

__all__ = [
    "CATEGORY_COLORS", "CATEGORY_LABELS", "category_color", "category_colorscale", "category_legend",
    "hard_region_mask", "box_sums", "box_min", "pixel_map",
    "category_counts", "histogram_data", "non_target_mass", "top_classes", "topk_label_data",
    "box_outlines", "crop_boxes_figure", "crop_grid_figure", "crop_pixels", "spread_by_y_s",
    "MASK_STATISTICS", "hard_region_figure", "image_mask",
    "ys_histogram_figure", "entropy_histogram_figure", "topk_bars_figure", "non_target_mass_figure",
    "ATTRIBUTION_METHODS", "attribution_figure", "attribution_maps", "crop_attribution_figure", "grad_cam",
    "integrated_gradients", "last_feature_layer", "occlusion", "teacher_crop",
    "accuracy_curves", "reliability_diagram", "comparison_bars", "expected_calibration_error",
    "crop_preview_figure", "mixed_preview_figure",
    "report_html", "write_report", "teacher_predictions_figure", "category_share_figure", "category_shares",
]
