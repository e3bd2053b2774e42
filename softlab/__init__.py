"""softlab: soft-label knowledge distillation on images (FKD, FerKD and baselines)."""
__version__ = "0.1.0"
