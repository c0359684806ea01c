"""The interface every mask format implements (`MaskWriter`), and what a writer is given.

A writer says what it needs (the series' DICOM headers, the taxonomy's colours, the
source's segment codes or ROI types), what it writes for each series and what index files
it adds beside tasks.json. The orchestrator (rbexport.task_export, rbexport.run) asks the
registry (`rbexport.mask_formats.writer_for`) for the writer of a variant and never names
a format. Two kinds:

- a *file* writer (NIfTI, PNG, MetaImage) encodes each mask the structure decided
  (`encode_file`): the label map, and the instance or category files of binary exports;
- a *series* writer (DICOM SEG, RT-STRUCT) writes one object per annotated series from its
  label map and its images' headers (`encode_series`), and no per-mask files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..taxonomy import Taxonomy

if TYPE_CHECKING:
    import nibabel as nib
    import numpy as np

    from ..images.dicom import SeriesHeaders
    from ..nifti import LabelMap
    from ..options import ExportOptions
    from ..segment_map import Instance
    from ..structures import MaskFile, SeriesExport, SeriesPaths
    from ..structures.masks import VoxelIndex

Encoded = tuple[tuple[str, bytes], ...]  # (path in the export, bytes) of files already encoded

# What a writer may need from the source besides the masks (read once per run into the Taxonomy).
COLOURS = "colours"  # the taxonomy's category colours
SEGMENT_CODES = "segment_codes"  # segment_codes.json
ROI_TYPES = "roi_types"  # the taxonomy's RT ROI interpreted types


# What the source says about categories (numbers, colours, segment codes, ROI types): the
# run's one Taxonomy, read once, as every writer gets it.
SourceExtras = Taxonomy


@dataclass(frozen=True)
class SeriesJob:
    """One annotated series as a series writer gets it: the structure's decision, the voxels, the images."""

    export: SeriesExport  # what the structure decided (entry, mask files, warnings)
    series: dict  # the source series entry
    instances: Sequence[Instance]  # its segmentMap, parsed once for the task (rbexport.annotations.ParsedTask)
    index: VoxelIndex
    label_map: LabelMap
    headers: Callable[[], SeriesHeaders]  # the series' DICOM headers (read ahead), TaskDataError when none
    name: str  # the series' name, for messages
    paths: SeriesPaths
    uid_seed: str  # what makes the object's UIDs its own: the variant and the object's path
    options: ExportOptions
    extras: SourceExtras


class MaskWriter:
    """A mask format. Subclasses set the class attributes and override what they do."""

    name: ClassVar[str]  # the mask_format value
    file_suffix: ClassVar[str]  # the extension of each file (a MetaImage's: its header's)
    # What needs the series' DICOM headers, for messages ("a DICOM SEG"); None: the writer reads no images.
    needs_dicom: ClassVar[str | None] = None
    needs: ClassVar[frozenset[str]] = frozenset()  # of COLOURS, SEGMENT_CODES, ROI_TYPES

    def suffix(self, options: ExportOptions) -> str:
        return self.file_suffix

    def prepare(self) -> None:
        """Load what encoding needs once per process, before a task's first series (a library)."""

    def working_memory(self, series: dict, voxels: int, options: ExportOptions) -> int:
        """The most encoding one series of `voxels` holds beside its label map (series writers)."""
        return 0

    def encode_series(self, job: SeriesJob) -> tuple[SeriesExport, Encoded]:
        """A series' entry and the objects written for it; a file writer keeps the structure's files."""
        return job.export, ()

    def check_label_map(self, like: nib.Nifti1Header) -> None:
        """Refuse (TaskDataError), before anything is written, a label map this format cannot hold."""

    def header_for(self, like: nib.Nifti1Header, dtype: type | np.dtype) -> bytes | None:
        """A header shared by every file of one label map and type (NIfTI's), made once; None when unused."""
        return None

    def encode_file(
        self, mask_file: MaskFile, like: nib.Nifti1Header, options: ExportOptions, head: bytes | None
    ) -> list[tuple[str, bytes]]:
        """The files (path, bytes) one mask is written as (file writers)."""
        raise NotImplementedError(f"{self.name} masks are not written one file at a time")

    def index_files(self, entries: Sequence[dict], options: ExportOptions, extras: SourceExtras) -> Encoded:
        """Files at the export root that say what the masks hold, written before tasks.json."""
        return ()

    def written_with(self, extras: SourceExtras) -> dict | None:
        """What else the files are made from (in each task's fingerprint: a change exports it again)."""
        return None
