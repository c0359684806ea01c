"""Several structure variants in one run: presets, custom option sets, their roots.

One variant writes at the destination itself; several write at `<destination>/<name>/`,
each a complete export with its own tasks.json, report and state (SPEC 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigurationError
from .naming import safe_name
from .options import ExportOptions


class Preset(StrEnum):
    """Named structures; with them, `no_consensus`, `compress` and `mask_format` (with the
    image options) come from the run's options: a preset changes the structure, not the file format."""

    standard = "standard"
    binary = "binary"
    single = "single"
    semantic = "semantic"
    semantic_binary = "semantic-binary"


# The structure fields each preset fixes (all of them RedBrick exports).
PRESET_STRUCTURES: dict[Preset, dict] = {
    Preset.standard: {"semantic_mask": False, "binary_mask": None, "layout": "redbrick"},
    Preset.binary: {"semantic_mask": False, "binary_mask": True, "layout": "redbrick"},
    Preset.single: {"semantic_mask": False, "binary_mask": False, "layout": "redbrick"},
    Preset.semantic: {"semantic_mask": True, "binary_mask": None, "layout": "redbrick"},
    Preset.semantic_binary: {"semantic_mask": True, "binary_mask": True, "layout": "redbrick"},
}


class Variant(BaseModel):
    """A custom option set with the folder name it is written under."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Folder of this variant under the destination, when a run writes several.")
    options: ExportOptions = Field(default_factory=ExportOptions, description="The structure of this variant.")


def resolve_variants(options: ExportOptions, variants: Sequence[Preset | Variant | str] | None) -> list[Variant]:
    """The variants a run writes: `options` alone when no variants are asked for."""
    if not variants:
        return [Variant(name="export", options=options)]
    resolved = [_resolve(item, options) for item in variants]
    names = [variant.name for variant in resolved]
    for name in names:
        if safe_name(name) != name:
            raise ConfigurationError(f"variant name {name!r} is not a safe folder name")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigurationError(f"variant names must be unique; repeated: {', '.join(duplicates)}")
    return resolved


def _resolve(item: Preset | Variant | str | dict, options: ExportOptions) -> Variant:
    if isinstance(item, Variant):
        return item
    if isinstance(item, dict):
        try:
            return Variant.model_validate(item)
        except ValidationError as error:
            raise ConfigurationError(f"invalid variant {item!r}: {error.errors()[0]['msg']}") from None
    try:
        preset = Preset(item)
    except ValueError:
        raise ConfigurationError(
            f"unknown variant preset {item!r}; presets: {', '.join(preset.value for preset in Preset)}"
        ) from None
    return Variant(name=preset.value, options=options.model_copy(update=PRESET_STRUCTURES[preset]))


def parse_variant_argument(text: str) -> Preset | Variant:
    """`--variant` on the command line: a preset name, or `NAME:option=value,...`.

    `rbexport run ... --variant semantic --variant raw:compress=false,binary_mask=true`
    `--variant Dataset501_Brain:layout=nnunet,channels=T1,T2,modality=MR`
    """
    name, colon, settings = text.partition(":")
    if not colon:
        return Preset(name) if name in {preset.value for preset in Preset} else _unknown_preset(name)
    values: dict[str, object] = {}
    key: str | None = None
    for setting in filter(None, settings.split(",")):
        option, equals, value = setting.partition("=")
        if not equals:
            if key is not None and key in LIST_OPTIONS:  # channels=T1,T2,FLAIR: the list goes on
                values[key] = [*cast(list, values[key]), setting.strip()]
                continue
            raise ConfigurationError(f"--variant {text!r}: expected option=value, got {setting!r}")
        key = option.strip()
        values[key] = [value.strip()] if key in LIST_OPTIONS else _option_value(value.strip())
    try:
        return Variant(name=name, options=ExportOptions(**values))
    except ValidationError as error:
        problem = error.errors()[0]
        raise ConfigurationError(
            f"--variant {text!r}: {'.'.join(map(str, problem['loc']))}: {problem['msg']}"
        ) from None


# Options whose value is a list: in `--variant`, the names after `channels=` up to the next
# option=value are its items.
LIST_OPTIONS = ("channels",)


def _unknown_preset(name: str) -> Preset:
    raise ConfigurationError(
        f"unknown variant {name!r}; use a preset ({', '.join(preset.value for preset in Preset)}) "
        "or NAME:option=value,..."
    )


def _option_value(text: str) -> object:
    lowered = text.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    if lowered in ("none", "null", "auto", ""):
        return None
    return text
