"""Category numbers from a RedBrick taxonomy (SPEC 1): `classId + 1`, stable under reordering.

Every number is checked before it is used: a classId is a whole number whose category
number fits the largest label type an export writes (uint16), and two categories never
share one (a semantic export would merge them without a word).
"""

from __future__ import annotations

from .display import shown
from .errors import ConfigurationError
from .nifti import UINT16_MAX

# The largest classId: its category number, classId + 1, is a uint16 label value.
MAX_CLASS_ID = UINT16_MAX - 1


def category_numbers(taxonomy: object, origin: str = "taxonomy.json") -> dict[str, int]:
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
