"""Text from the input, made safe to show: the one place that escapes control characters.

Task ids, names, paths and reasons come from a source anyone may have written. Printed
raw, a newline in a taskId forges a line of its own (`rbexport: 99 tasks exported, 0
failed`), an ESC sequence moves the cursor or clears the screen, a bidi override shows a
name backwards. `shown` escapes every such character, so whatever the input holds stays
on its line and reads as it is stored; every line printed (CLI, progress display), logged
(Prefect logs) or put in an artifact passes what comes from the input through it. The
machine-readable files (tasks.json, the report, the state) keep the true values: JSON
escapes what it must.
"""

from __future__ import annotations

import re

# C0 controls but none (newline and tab included), DEL, C1 controls; the bidi controls
# (embeddings, overrides, isolates, marks); line and paragraph separators; BOM / zero
# width no-break space; lone surrogates (not text: they cannot even be encoded).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\e"}


def _escape(match: re.Match[str]) -> str:
    character = match.group()
    named = _NAMED.get(character)
    if named is not None:
        return named
    code = ord(character)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def shown(text: object) -> str:
    """`text` (made a string) with every control character escaped (`\\n`, `\\e`, `\\x07`,
    `\\u202e`): one line, nothing a terminal or log viewer acts on."""
    return _UNSAFE.sub(_escape, text if isinstance(text, str) else str(text))
