"""mkdocs hooks: reference tables generated from the code, so the docs cannot drift from it.

- `<!-- export-options -->` becomes a table of ExportOptions' fields (name, type, default,
  description), the same descriptions the Prefect form shows.
- `<!-- cli-help: run -->` (or verify, demo, ...) becomes that command's `--help`, and
  `<!-- cli-help -->` the top-level help.
"""

from __future__ import annotations

import re

CLI_HELP = re.compile(r"<!-- cli-help(?::\s*([\w -]+?))? -->")


def on_page_markdown(markdown: str, **_: object) -> str:
    if "<!-- export-options -->" in markdown:
        markdown = markdown.replace("<!-- export-options -->", _options_table())
    return CLI_HELP.sub(lambda match: _cli_help((match.group(1) or "").split()), markdown)


def _options_table() -> str:
    from rbexport.options import ExportOptions

    rows = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for name, field in ExportOptions.model_fields.items():
        annotation = field.annotation
        kind = annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
        kind = kind.replace("|", "or")
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{name}` | `{kind}` | `{field.default!r}` | {description} |")
    return "\n".join(rows)


def _cli_help(words: list[str]) -> str:
    import argparse
    import os

    from rbexport.app.parser import build_parser

    os.environ["COLUMNS"] = "100"
    parser = build_parser()
    for word in words:
        actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        parser = actions[0].choices[word]
    return "```text\n" + parser.format_help().rstrip() + "\n```"
