"""Category numbers from a RedBrick taxonomy (SPEC 1): `classId + 1`, stable under reordering."""

from __future__ import annotations

from .errors import ConfigurationError


def category_numbers(taxonomy: object, origin: str = "taxonomy.json") -> dict[str, int]:
    """Map each segmentation category name to its category number."""
    object_types = taxonomy.get("objectTypes") if isinstance(taxonomy, dict) else None
    if not isinstance(object_types, list):
        raise ConfigurationError(f"{origin} has no objectTypes list (RedBrick taxonomy format expected)")
    numbers: dict[str, int] = {}
    for position, object_type in enumerate(object_types):
        if not isinstance(object_type, dict):
            raise ConfigurationError(f"{origin}: objectTypes[{position}] is not an object")
        if object_type.get("labelType", "SEGMENTATION") != "SEGMENTATION":
            continue
        category, class_id = object_type.get("category"), object_type.get("classId")
        if not isinstance(category, str) or not isinstance(class_id, int) or isinstance(class_id, bool) or class_id < 0:
            raise ConfigurationError(
                f"{origin}: objectTypes[{position}] needs a category name and a classId of 0 or more"
            )
        if category in numbers and numbers[category] != class_id + 1:
            raise ConfigurationError(
                f"{origin}: category {category!r} appears with classIds {numbers[category] - 1} and {class_id}"
            )
        numbers[category] = class_id + 1
    return numbers
