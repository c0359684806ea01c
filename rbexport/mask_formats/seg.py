"""DICOM SEG in the registry (`mask_format = dicom-seg`): one Segmentation per annotated series.

The encoding is rbexport.mask_formats.dicom_seg's (and its fast dataset writer,
seg_writer); this wraps it as a series writer: it needs the series' DICOM headers (read
ahead while the task decodes its masks), the taxonomy's colours and segment_codes.json.
"""

from __future__ import annotations

from ..options import ExportOptions
from ..structures import SeriesExport
from . import dicom_seg
from .base import COLOURS, SEGMENT_CODES, Encoded, MaskWriter, SeriesJob, SourceExtras


class DicomSegWriter(MaskWriter):
    name = "dicom-seg"
    file_suffix = ".dcm"
    needs_dicom = dicom_seg.NEEDED_BY
    needs = frozenset({COLOURS, SEGMENT_CODES})

    def prepare(self) -> None:
        dicom_seg.load_highdicom()

    def working_memory(self, series: dict, voxels: int, options: ExportOptions) -> int:
        return dicom_seg.working_memory(series, voxels, options.seg_type)

    def encode_series(self, job: SeriesJob) -> tuple[SeriesExport, Encoded]:
        """The series as one DICOM SEG (its structure's masks as segments): its entry and its file."""
        export, extras = job.export, job.extras
        segments = dicom_seg.plan_segments(
            job.instances,
            job.index,
            job.options.semantic_mask,
            extras.category_numbers,
        )
        path = job.paths.label_map
        entry = dicom_seg.segmentation_entry(export.series, path if segments else None, segments)
        if not segments:
            return SeriesExport(entry, [], [*export.warnings, "no annotated voxels: no DICOM SEG written"]), ()
        data = dicom_seg.encode_segmentation(
            segments,
            job.index,
            job.label_map,
            job.headers(),
            job.name,
            job.uid_seed,
            extras.colours,
            extras.segment_codes,
            seg_type=job.options.seg_type,
            compression=job.options.seg_compression,
        )
        return SeriesExport(entry, [], export.warnings), ((path, data),)

    def written_with(self, extras: SourceExtras) -> dict | None:
        """A DICOM SEG holds the taxonomy's colours and segment_codes.json."""
        return {"colours": extras.colours, "segment_codes": extras.segment_codes}
