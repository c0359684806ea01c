"""A category's display colour: the taxonomy's `color` when it has one (read with the run's
`rbexport.taxonomy.Taxonomy`), else a fixed palette.

The palette is indexed by the value a colour is for (category number, or instance id), so a
value keeps its colour from task to task and run to run.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..taxonomy import RGB, parse_colour, taxonomy_colours

__all__ = ["PALETTE", "RGB", "colour_of", "parse_colour", "taxonomy_colours"]

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


def colour_of(category: object, value: int, colours: Mapping[str, RGB] | None) -> RGB:
    """The taxonomy's colour of `category`, else the palette's colour for `value`."""
    if isinstance(category, str) and colours and category in colours:
        return colours[category]
    return PALETTE[(value - 1) % len(PALETTE)]
