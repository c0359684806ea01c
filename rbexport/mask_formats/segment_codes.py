"""What each DICOM SEG segment is, as coded concepts: `segment_codes.json` in the source.

A segment needs a Segmented Property Category and Type (DCMR CID 7150 and 7151 families).
`segment_codes.json`, beside taxonomy.json, maps a category name to its type code and,
optionally, its category code; the scheme defaults to SNOMED CT (`SCT`):

    {
      "Liver": {"code": "10200004", "meaning": "Liver",
                "category": {"code": "123037004", "meaning": "Anatomical Structure"}},
      "Glioma": {"code": "393564001", "meaning": "Glioma", "scheme": "SCT"}
    }

A category the file does not name (or every category, without the file) is coded as
3D Slicer codes a new segment: category and type both SNOMED CT 85756007 "Tissue", a
concept of CID 7150 and 7151 that every PACS and viewer accepts. Its name stays in the
SegmentLabel. A category given a type but no category code gets category "Tissue" too.

The file is read with taxonomy.json, once per run, into the run's `rbexport.taxonomy.Taxonomy`
(whose module parses it); here is how a writer looks a category's code up.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..taxonomy import (
    DEFAULT_SEGMENT_CODE,
    SEGMENT_CODES_FILE,
    SNOMED_CT,
    TISSUE,
    Code,
    SegmentCode,
    parse_segment_codes,
)

__all__ = [
    "DEFAULT_SEGMENT_CODE",
    "SEGMENT_CODES_FILE",
    "SNOMED_CT",
    "TISSUE",
    "Code",
    "SegmentCode",
    "code_of",
    "parse_segment_codes",
]


def code_of(category: object, codes: Mapping[str, SegmentCode] | None) -> SegmentCode:
    if isinstance(category, str) and codes and category in codes:
        return codes[category]
    return DEFAULT_SEGMENT_CODE
