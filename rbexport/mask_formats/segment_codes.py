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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ConfigurationError

SEGMENT_CODES_FILE = "segment_codes.json"
SNOMED_CT = "SCT"


@dataclass(frozen=True)
class Code:
    value: str
    meaning: str
    scheme: str = SNOMED_CT


@dataclass(frozen=True)
class SegmentCode:
    """A segment's Segmented Property Category and Type."""

    category: Code
    type: Code


TISSUE = Code("85756007", "Tissue")
DEFAULT_SEGMENT_CODE = SegmentCode(category=TISSUE, type=TISSUE)


def parse_segment_codes(body: object, origin: str = SEGMENT_CODES_FILE) -> dict[str, SegmentCode]:
    """The codes of `segment_codes.json`; ConfigurationError naming the entry at fault."""
    if not isinstance(body, dict):
        raise ConfigurationError(f"{origin} must be an object mapping category names to codes")
    return {category: _segment_code(entry, f"{origin}: {category!r}") for category, entry in body.items()}


def code_of(category: object, codes: Mapping[str, SegmentCode] | None) -> SegmentCode:
    if isinstance(category, str) and codes and category in codes:
        return codes[category]
    return DEFAULT_SEGMENT_CODE


def _segment_code(entry: object, where: str) -> SegmentCode:
    type_code = _code(entry, where)
    category = entry.get("category") if isinstance(entry, dict) else None
    return SegmentCode(category=TISSUE if category is None else _code(category, f"{where} category"), type=type_code)


def _code(entry: object, where: str) -> Code:
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where} must be an object with code, meaning and (optionally) scheme")
    value, meaning, scheme = entry.get("code"), entry.get("meaning"), entry.get("scheme", SNOMED_CT)
    for name, text in (("code", value), ("meaning", meaning), ("scheme", scheme)):
        if not isinstance(text, str) or not text.strip():
            raise ConfigurationError(f"{where} needs a non-empty {name} (a string)")
    assert isinstance(value, str) and isinstance(meaning, str) and isinstance(scheme, str)
    return Code(value.strip(), meaning.strip(), scheme.strip())
