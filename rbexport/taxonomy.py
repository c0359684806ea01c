"""What a source says about its categories, read once per run into one `Taxonomy` (SPEC 1).

From taxonomy.json (a RedBrick taxonomy): each segmentation category's **category number**
(`classId + 1`, stable under reordering), its display `color` and its RT ROI interpreted
type (`rtRoiInterpretedType`); from segment_codes.json beside it, each category's DICOM SEG
codes (rbexport.mask_formats.segment_codes describes the file). `parse_taxonomy` builds and
validates it, reading only the parts the run's variants need (`TaxonomyNeeds`): a part no
variant needs is neither read nor checked, so a standard export never fails on a taxonomy
only a semantic one would use. rbexport.source.read_taxonomy reads each file once.

Every number is checked before it is used: a classId is a whole number whose category
number fits the largest label type an export writes (uint16), and two categories never
share one (a semantic export would merge them without a word).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .display import shown
from .errors import ConfigurationError
from .nifti import UINT16_MAX

RGB = tuple[int, int, int]

TAXONOMY_FILE = "taxonomy.json"
SEGMENT_CODES_FILE = "segment_codes.json"
SNOMED_CT = "SCT"
ROI_TYPE_FIELD = "rtRoiInterpretedType"  # in a taxonomy's objectTypes
# The largest classId: its category number, classId + 1, is a uint16 label value.
MAX_CLASS_ID = UINT16_MAX - 1
_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")  # a DICOM code string (CS)


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


@dataclass(frozen=True)
class Category:
    """One category as the source describes it (None: not said, or not read for this run)."""

    name: str
    number: int | None = None  # classId + 1, a segmentation category's
    colour: RGB | None = None
    roi_type: str | None = None
    segment_code: SegmentCode | None = None


@dataclass(frozen=True)
class TaxonomyNeeds:
    """Which parts of the taxonomy a run's variants use."""

    numbers_for: str | None = None  # what needs category numbers, for the message when taxonomy.json is missing
    colours: bool = False
    segment_codes: bool = False
    roi_types: bool = False

    @property
    def taxonomy_file(self) -> bool:
        """Whether taxonomy.json is read at all."""
        return self.numbers_for is not None or self.colours or self.roi_types


@dataclass(frozen=True)
class Taxonomy:
    """The source's categories, by name, in the parts the run read (None: a part not read).

    Plain mappings, so the run's settings stay picklable; `category(name)` gives one
    category whole.
    """

    category_numbers: Mapping[str, int] | None = None  # semantic exports and dataset layouts
    colours: Mapping[str, RGB] | None = None  # PNG's class map, DICOM SEG, RT-STRUCT
    segment_codes: Mapping[str, SegmentCode] | None = None  # DICOM SEG
    roi_types: Mapping[str, str] | None = None  # RT-STRUCT: RTROIInterpretedType by category

    def category(self, name: str) -> Category:
        return Category(
            name,
            (self.category_numbers or {}).get(name),
            (self.colours or {}).get(name),
            (self.roi_types or {}).get(name),
            (self.segment_codes or {}).get(name),
        )

    @property
    def categories(self) -> tuple[Category, ...]:
        """Every category any part names: numbered ones in number order, then the others."""
        numbers = self.category_numbers or {}
        names = sorted(numbers, key=lambda name: (numbers[name], name))
        for part in (self.colours, self.roi_types, self.segment_codes):
            names += [name for name in part or {} if name not in names]
        return tuple(self.category(name) for name in names)


def parse_taxonomy(
    taxonomy: object,
    needs: TaxonomyNeeds,
    origin: str = TAXONOMY_FILE,
    segment_codes: Callable[[], object] | None = None,
    codes_origin: str = SEGMENT_CODES_FILE,
    check_numbers: Callable[[Mapping[str, int]], object] | None = None,
) -> Taxonomy:
    """The parts `needs` asks for, validated in this order: numbers (then `check_numbers`,
    which refuses numbers the run cannot use, a training layout's), colours, segment codes,
    ROI types. ConfigurationError (one line, naming the file and entry at fault) for the
    first thing wrong. `taxonomy` is taxonomy.json's content (None: the source has none);
    `segment_codes` reads segment_codes.json's (None, or returning None: there is none),
    called only when the codes are needed."""
    numbers = None
    if needs.numbers_for is not None:
        numbers = category_numbers(taxonomy, origin)
        if check_numbers is not None:
            check_numbers(numbers)
    return Taxonomy(
        category_numbers=numbers,
        colours=taxonomy_colours(taxonomy) if needs.colours else None,
        segment_codes=_segment_codes(segment_codes, codes_origin) if needs.segment_codes else None,
        roi_types=taxonomy_roi_types(taxonomy, origin) if needs.roi_types else None,
    )


def _segment_codes(read: Callable[[], object] | None, origin: str) -> dict[str, SegmentCode]:
    body = read() if read is not None else None
    return {} if body is None else parse_segment_codes(body, origin)


def category_numbers(taxonomy: object, origin: str = TAXONOMY_FILE) -> dict[str, int]:
    """Map each segmentation category name to its category number."""
    origin = shown(origin)
    object_types = taxonomy.get("objectTypes") if isinstance(taxonomy, dict) else None
    if not isinstance(object_types, list):
        raise ConfigurationError(f"{origin} has no objectTypes list (RedBrick taxonomy format expected)")
    numbers: dict[str, int] = {}
    owners: dict[int, str] = {}  # category number -> the category that has it
    for position, object_type in enumerate(object_types):
        if not isinstance(object_type, dict):
            raise ConfigurationError(f"{origin}: objectTypes[{position}] is not an object")
        if object_type.get("labelType", "SEGMENTATION") != "SEGMENTATION":
            continue
        category, class_id = object_type.get("category"), object_type.get("classId")
        if not isinstance(category, str) or not isinstance(class_id, int) or isinstance(class_id, bool) or class_id < 0:
            raise ConfigurationError(
                f"{origin}: objectTypes[{position}] needs a category name and a classId of 0 or more "
                f"(a whole number), not {shown(repr(class_id))[:40]}"
            )
        if class_id > MAX_CLASS_ID:
            raise ConfigurationError(
                f"{origin}: category {shown(repr(category))} has classId {class_id}; its category number "
                f"(classId + 1) must fit a label map, so classIds go up to {MAX_CLASS_ID}"
            )
        if category in numbers and numbers[category] != class_id + 1:
            raise ConfigurationError(
                f"{origin}: category {shown(repr(category))} appears with classIds {numbers[category] - 1} and {class_id}"
            )
        other = owners.get(class_id + 1)
        if other is not None and other != category:
            raise ConfigurationError(
                f"{origin}: categories {shown(repr(other))} and {shown(repr(category))} have the same classId "
                f"{class_id}; each category needs its own"
            )
        numbers[category] = class_id + 1
        owners[class_id + 1] = category
    return numbers


def taxonomy_colours(taxonomy: object) -> dict[str, RGB]:
    """Each category's `color` (`#rrggbb`) in a RedBrick taxonomy; categories without one are left out."""
    colours: dict[str, RGB] = {}
    for object_type in _object_types(taxonomy):
        category, colour = object_type.get("category"), object_type.get("color")
        parsed = parse_colour(colour)
        if isinstance(category, str) and parsed is not None:
            colours.setdefault(category, parsed)
    return colours


def parse_colour(text: object) -> RGB | None:
    """`#ff8000` (or `ff8000`, `#f80`) as (255, 128, 0); None when it is not such a colour."""
    if not isinstance(text, str):
        return None
    digits = text.strip().removeprefix("#")
    if len(digits) == 3:
        digits = "".join(digit * 2 for digit in digits)
    if len(digits) != 6:
        return None
    try:
        return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)
    except ValueError:
        return None


def taxonomy_roi_types(taxonomy: object, origin: str = TAXONOMY_FILE) -> dict[str, str]:
    """Each category's `rtRoiInterpretedType` (a DICOM code string: ORGAN, PTV, GTV, CTV,
    AVOIDANCE, EXTERNAL, ...); ConfigurationError naming a category whose value is not one."""
    types: dict[str, str] = {}
    for object_type in _object_types(taxonomy):
        if ROI_TYPE_FIELD not in object_type:
            continue
        category, value = object_type.get("category"), object_type[ROI_TYPE_FIELD]
        if not isinstance(value, str) or not _CODE_STRING.fullmatch(value):
            raise ConfigurationError(
                f"{origin}: {ROI_TYPE_FIELD} of category {category!r} must be a DICOM code string "
                f"(capitals, digits, _ or space, at most 16), such as ORGAN or PTV; found {value!r}"[:300]
            )
        if isinstance(category, str):
            types.setdefault(category, value)
    return types


def _object_types(taxonomy: object) -> list[dict]:
    """The taxonomy's objectTypes that are objects (the colours and ROI types skip the rest)."""
    object_types = taxonomy.get("objectTypes") if isinstance(taxonomy, dict) else None
    return [item for item in object_types if isinstance(item, dict)] if isinstance(object_types, list) else []


def parse_segment_codes(body: object, origin: str = SEGMENT_CODES_FILE) -> dict[str, SegmentCode]:
    """The codes of `segment_codes.json`; ConfigurationError naming the entry at fault."""
    if not isinstance(body, dict):
        raise ConfigurationError(f"{origin} must be an object mapping category names to codes")
    return {category: _segment_code(entry, f"{origin}: {category!r}") for category, entry in body.items()}


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
