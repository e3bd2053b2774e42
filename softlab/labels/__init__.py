"""Region soft labels: quantisation, the memory-mapped store, generation and FKD interop."""
from .quantize import LabelType, dense_labels, entropy, parse_label_type, quantize
from .store import LabelStore, StoreError
from .generate import generate_labels, skipped_images

__all__ = ["LabelType", "dense_labels", "entropy", "parse_label_type", "quantize", "LabelStore", "StoreError",
           "generate_labels", "skipped_images"]
