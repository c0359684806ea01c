"""Folder and file names for tasks and series (SPEC 2, "Names").

A name is one path component: it can never hold a separator, never be `.` or `..`, and
never exceed the byte length file systems accept, so nothing is written outside the
export root whatever the source says.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence

# Every run of characters other than letters, digits and `_ . space # @ + ( ) , = [ ] { } ! ~ -`.
_UNSAFE_RUN = re.compile(r"[^\w .#@+(),=\[\]{}!~-]+")
# Windows counts the superscript digits ¹ ² ³ as digits here too (COM¹ is a device).
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"{device}{digit}" for device in ("COM", "LPT") for digit in [*"123456789", "\u00b9", "\u00b2", "\u00b3"]]
)
# A component may hold 255 bytes; keep room for `_<n>` and `.nii.gz` after a series name.
MAX_NAME_BYTES = 200
_HASH_CHARS = 8


def safe_name(name: object) -> str | None:
    """The name made safe for a path component, or None when nothing usable is left."""
    if not isinstance(name, str):
        return None
    # Composed first (NFC): `e` + a combining accent, as macOS writes names, is `é`, a
    # letter, not `e` and a character to replace.
    safe = _UNSAFE_RUN.sub("-", unicodedata.normalize("NFC", name)).rstrip(" .")
    if not safe:  # also covers "." and "..", which lose their dots above
        return None
    # Windows reserves these names with any extension too (CON.nii.gz), in any case, and
    # with spaces before the extension (`CON .nii`).
    if safe.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_RESERVED:
        safe = "_" + safe
    return _shorten(safe)


def _shorten(name: str) -> str:
    encoded = name.encode("utf-8")
    if len(encoded) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:_HASH_CHARS]
    head = encoded[: MAX_NAME_BYTES - _HASH_CHARS - 1].decode("utf-8", errors="ignore").rstrip(" .")
    return f"{head}-{digest}"


def fold(name: str) -> str:
    """What two names have in common when a file system takes them for one: case and
    Unicode normalization ignored (Unicode's canonical caseless match)."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def series_letter(position: int) -> str:
    """A, B, ..., Z, AA, AB, ... for series positions 0, 1, ..."""
    letters = ""
    position += 1
    while position:
        position, remainder = divmod(position - 1, 26)
        letters = chr(ord("A") + remainder) + letters
    return letters


def task_folder_name(task: dict) -> str:
    """`name` made safe, else `taskId` made safe, else a stable name derived from the id."""
    for candidate in (task.get("name"), task.get("taskId")):
        safe = safe_name(candidate)
        if safe:
            return safe
    digest = hashlib.sha256(str(task.get("taskId")).encode("utf-8")).hexdigest()[:12]
    return f"task-{digest}"


def series_names(names: Sequence[object]) -> list[str]:
    """Safe, unique names for the series of one task, in order.

    A series whose name is missing or unusable gets the letter of its position; a name
    already used gets `_1`, `_2`, ... on its later occurrences.
    """
    chosen = [safe_name(name) or series_letter(position) for position, name in enumerate(names)]
    return deduplicate(chosen)


def deduplicate(names: Iterable[str], taken: set[str] | None = None) -> list[str]:
    """Later repeats of a name get `_1`, `_2`, ..., never a name already taken.

    Names that differ only in case are repeats (`T1`, `t1` -> `T1`, `t1_1`): on macOS
    and Windows they would be one file; so are names that differ only in how their
    accents are encoded (`é` as one character or as `e` and a combining accent), which
    macOS's file systems also take for one name. `taken` holds names used elsewhere; the names
    chosen here are added to it.
    """
    taken = set() if taken is None else taken
    folded = {fold(name) for name in taken}
    counters: dict[str, int] = {}
    unique = []
    for name in names:
        candidate = name
        while fold(candidate) in folded:
            counters[fold(name)] = counters.get(fold(name), 0) + 1
            candidate = f"{name}_{counters[fold(name)]}"
        taken.add(candidate)
        folded.add(fold(candidate))
        unique.append(candidate)
    return unique


def image_file_names(references: Sequence[str]) -> list[str]:
    """File names for a series' image items (SPEC 5): each item's base name made safe;
    names repeated within the series (in any case: `A.dcm` and `a.dcm` are one file on
    macOS and Windows) get `-<index>` (the item's position, zero-padded to the width of
    the item count) before the extension."""
    width = len(str(len(references)))
    bases = [safe_name(reference.rsplit("/", 1)[-1]) or f"item{_extension(reference)}" for reference in references]
    folded = [fold(base) for base in bases]
    return [
        f"{_stem(base)}-{position:0{width}d}{_extension(base)}" if folded.count(fold(base)) > 1 else base
        for position, base in enumerate(bases)
    ]


def _extension(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    if base.lower().endswith(".nii.gz"):
        return base[-7:]
    stem, dot, extension = base.rpartition(".")
    return f".{extension}" if dot and stem else ""


def _stem(name: str) -> str:
    extension = _extension(name)
    return name[: len(name) - len(extension)] if extension else name
