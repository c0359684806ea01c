"""Each export option is described once: `rbexport run`'s flags that set an ExportOptions field
take their help from the field's description (the Prefect form's text), issue 21.

Every field has exactly one flag (or an on/off pair of mutually exclusive flags) whose
dest is the field, or is listed in OPTIONS_WITHOUT_FLAGS with the reason; the flag's help
is the field's description (its first sentence when long), and the flag really sets the
field of the options a run exports with.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re

import pytest

from rbexport.app.cli import main
from rbexport.app.parser import OPTIONS_WITHOUT_FLAGS, SUMMARY_CHARS, build_parser, export_options
from rbexport.options import ExportOptions

REQUIRED = ["run", "--source", "src", "--dest", "dst"]


def run_parser() -> argparse.ArgumentParser:
    [commands] = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return commands.choices["run"]


def flags_of(field: str, run: argparse.ArgumentParser | None = None) -> list[argparse.Action]:
    """The run flags whose dest is `field`."""
    return [action for action in (run or run_parser())._actions if action.dest == field]


def described(field: str) -> str:
    """What the flag's help must say: the field's description, or its first sentence when long."""
    description = " ".join((ExportOptions.model_fields[field].description or "").split())
    assert description, f"ExportOptions.{field} has no description"
    return description if len(description) <= SUMMARY_CHARS else description.split(". ")[0] + "."


def test_every_export_option_has_exactly_one_flag_or_a_reason_not_to():
    run = run_parser()
    for field in ExportOptions.model_fields:
        flags = flags_of(field, run)
        if field in OPTIONS_WITHOUT_FLAGS:
            assert not flags and OPTIONS_WITHOUT_FLAGS[field].strip(), field
            continue
        assert flags, f"ExportOptions.{field} has no run flag (nor a reason in OPTIONS_WITHOUT_FLAGS)"
        if len(flags) > 1:  # one option switched on or off: a mutually exclusive pair, nothing more
            [group] = [group for group in run._mutually_exclusive_groups if flags[0] in group._group_actions]
            assert group._group_actions == flags, field
            assert sorted(flag.const for flag in flags) == [False, True], field
    assert not set(OPTIONS_WITHOUT_FLAGS) - set(ExportOptions.model_fields)


@pytest.mark.parametrize("field", [name for name in ExportOptions.model_fields if name not in OPTIONS_WITHOUT_FLAGS])
def test_a_flag_is_helped_by_its_options_description_and_sets_that_option(field):
    for flag in flags_of(field):
        help_text = (flag.help or "").replace("%%", "%")
        assert help_text.endswith(described(field)), (flag.option_strings, help_text)
        assert flag.default == ExportOptions.model_fields[field].default, flag.option_strings
        # The flag sets its field in the options the run exports with.
        if flag.nargs == 0:
            argv = [*REQUIRED, flag.option_strings[0]]
        elif flag.choices:
            value = next(choice for choice in flag.choices if choice != flag.default)
            argv = [*REQUIRED, flag.option_strings[0], value]
        else:
            argv = [*REQUIRED, flag.option_strings[0], "T1"]
        options = export_options(build_parser().parse_args(argv))
        assert getattr(options, field) != ExportOptions.model_fields[field].default, argv
        assert getattr(export_options(build_parser().parse_args(REQUIRED)), field) == getattr(ExportOptions(), field)


def test_run_help_shows_each_options_description():
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown), pytest.raises(SystemExit) as exited:
        main(["run", "--help"])
    assert exited.value.code == 0
    text = " ".join(shown.getvalue().split())
    for field in ExportOptions.model_fields:
        if field not in OPTIONS_WITHOUT_FLAGS:
            # argparse wraps at hyphens too: compare without the spaces it may put after one
            assert re.sub(r"- ", "-", described(field)) in re.sub(r"- ", "-", text), field
