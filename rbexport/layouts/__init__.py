"""Training layouts (SPEC 6): pure functions of arrays and dicts, no storage and no Prefect.

- labels: consecutive training labels and the label map of a series
- cases: which series make a case, case ids, fold group keys
- folds: fold assignment kept across runs, nnU-Net's splits
- modalities: each channel's modality name
- nnunet, msd: file paths and metadata files of each layout, registered in LAYOUTS
"""

from __future__ import annotations

from .layout import Dataset, Layout
from .msd import MSD
from .nnunet import NNUNET

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (NNUNET, MSD)}

__all__ = ["LAYOUTS", "Dataset", "Layout"]
