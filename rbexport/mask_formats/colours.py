"""A category's display colour: the taxonomy's `color` when it has one, else a fixed palette.

The palette is indexed by the value a colour is for (category number, or instance id), so a
value keeps its colour from task to task and run to run.
"""

from __future__ import annotations

from collections.abc import Mapping

RGB = tuple[int, int, int]

# Twelve distinct colours (ColorBrewer "Paired", reordered: strong ones first).
PALETTE: tuple[RGB, ...] = (
    (227, 26, 28),
    (31, 120, 180),
    (51, 160, 44),
    (255, 127, 0),
    (106, 61, 154),
    (177, 89, 40),
    (251, 154, 153),
    (166, 206, 227),
    (178, 223, 138),
    (253, 191, 111),
    (202, 178, 214),
    (255, 255, 153),
)


def taxonomy_colours(taxonomy: object) -> dict[str, RGB]:
    """Each category's `color` (`#rrggbb`) in a RedBrick taxonomy; categories without one are left out."""
    object_types = taxonomy.get("objectTypes") if isinstance(taxonomy, dict) else None
    colours: dict[str, RGB] = {}
    for object_type in object_types if isinstance(object_types, list) else []:
        if not isinstance(object_type, dict):
            continue
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


def colour_of(category: object, value: int, colours: Mapping[str, RGB] | None) -> RGB:
    """The taxonomy's colour of `category`, else the palette's colour for `value`."""
    if isinstance(category, str) and colours and category in colours:
        return colours[category]
    return PALETTE[(value - 1) % len(PALETTE)]
