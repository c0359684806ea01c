"""The `rbexport` command line's parser: its commands and their flags (rbexport.app.cli runs them).

The run command's flags that set an export option have the ExportOptions field they set
as their dest, and its description as their help (`option_help`), so each option is
described once: the Prefect form, the options reference and `rbexport run --help` show the
same text. `export_options` makes the ExportOptions the flags set. docs/hooks.py makes the
command line reference from this parser.
"""

from __future__ import annotations

import argparse
import re
from typing import Any, get_args

from rbexport import __version__
from rbexport.options import ExportOptions, Layout, SegCompression, SegType

# A description longer than this is summed up in --help by its first sentence.
SUMMARY_CHARS = 450
# ExportOptions fields deliberately without a run flag of their own, each with the reason.
# with_images has its flag, and --images-as-nifti turns it on too (export_options).
OPTIONS_WITHOUT_FLAGS: dict[str, str] = {}


def build_parser() -> argparse.ArgumentParser:
    from rbexport.mask_formats import WRITERS

    parser = argparse.ArgumentParser(
        prog="rbexport",
        description="Export RedBrick-format annotation projects from and to S3-compatible storage or local folders.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="show Prefect's logs on the console")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,verify,release,unlock,demo}")

    run = commands.add_parser(
        "run",
        help="export a project",
        description="Export a project (SPEC.md).",
        epilog="A flag that sets an export option is described by that option's own text (ExportOptions, "
        "the fields of the Prefect flow's form), a long one by its first sentence: the options reference "
        "(docs/reference/options.md) has them in full.",
    )
    run.add_argument("--source", required=True, metavar="SRC", help="s3://bucket/prefix or a local folder")
    run.add_argument("--dest", required=True, metavar="DST", help="s3://bucket/prefix or a local folder")
    _option_flag(run, "semantic_mask", "--semantic", action="store_true")
    masks = run.add_mutually_exclusive_group()
    _option_flag(masks, "binary_mask", "--binary-mask", action="store_const", const=True)
    _option_flag(masks, "binary_mask", "--single-mask", action="store_const", const=False)
    _option_flag(run, "no_consensus", "--no-consensus", action="store_true")
    _option_flag(run, "compress", "--uncompressed", action="store_false")
    _option_flag(run, "mask_format", "--mask-format", choices=list(WRITERS))
    _option_flag(run, "seg_type", "--seg-type", choices=get_args(SegType))
    _option_flag(run, "seg_compression", "--seg-compression", choices=get_args(SegCompression))
    _option_flag(run, "with_images", "--with-images", action="store_true")
    _option_flag(run, "image_format", "--images-as-nifti", action="store_const", const="nifti")
    dataset = run.add_argument_group("training layouts (SPEC 6)")
    _option_flag(dataset, "layout", "--layout", choices=get_args(Layout))
    _option_flag(dataset, "channels", "--channels", metavar="NAME,NAME,...")
    _option_flag(dataset, "modality", "--modality", metavar="NAME")
    _option_flag(dataset, "group_by", "--group-by", metavar="FIELD")
    _option_flag(dataset, "dataset_name", "--dataset-name", metavar="TEXT")
    _option_flag(dataset, "description", "--description", metavar="TEXT")
    selection = run.add_argument_group("filters (SPEC 8): which tasks the export holds; several keep what matches all")
    selection.add_argument(
        "--stage",
        action="append",
        default=[],
        metavar="NAME",
        help="keep tasks in this stage (currentStageName; repeatable)",
    )
    selection.add_argument(
        "--ground-truth", action="store_true", help="keep only the ground truth (tasks whose currentStageName is END)"
    )
    selection.add_argument(
        "--task-id", action="append", default=[], metavar="ID", help="keep the task with this taskId (repeatable)"
    )
    selection.add_argument(
        "--since",
        metavar="TIME",
        help="keep tasks whose updatedAt is at or after TIME (ISO 8601; a date alone is midnight UTC)",
    )
    selection.add_argument(
        "--without-masks", action="store_true", help="write tasks.json and the report only, no mask file"
    )
    run.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME",
        help="write this structure too, under DST/NAME/ when there are several (repeatable): "
        "standard, binary, single, semantic, semantic-binary, or NAME:option=value,...",
    )
    run.add_argument(
        "--full", action="store_true", help="export every task again, even those unchanged since the last export"
    )
    run.add_argument(
        "--prune",
        action="store_true",
        help="delete the files of tasks removed from the source, and files no longer written",
    )
    run.add_argument(
        "--replace-layout",
        action="store_true",
        help="DST holds an export laid out the other way (one at its root, or variant folders): "
        "delete it and write this one",
    )
    run.add_argument(
        "--lock-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="while another run writes DST, wait this long before giving up with exit 2 (default: 3600)",
    )
    _store_arguments(run)
    run.add_argument(
        "--allow-bucket",
        action="append",
        default=[],
        metavar="BUCKET",
        help="also read masks from this bucket when tasks name it by s3:// URL (repeatable)",
    )
    run.add_argument(
        "--engine",
        choices=["auto", "prefect", "local"],
        default="auto",
        help="auto (default): the Prefect flow where a Prefect API is configured (PREFECT_API_URL, "
        "or a profile naming one), else local; prefect: the export flow, with its logs, artifacts "
        "and UI, on that API or on an ephemeral one; local: the same export in this process "
        "without Prefect (no server, starts at once)",
    )
    run.add_argument(
        "--batch-size",
        type=_positive,
        default=None,
        metavar="N",
        help="source tasks per batch (a Prefect task run); default: by size, about 32 MB each",
    )
    run.add_argument(
        "--workers",
        type=_positive,
        default=None,
        metavar="N",
        help="tasks exported at once (threads, or processes/Dask workers)",
    )
    run.add_argument(
        "--task-runner",
        choices=["threads", "processes", "dask"],
        default="threads",
        help="run tasks on threads of this process (default), local processes, or Dask",
    )
    run.add_argument(
        "--dask-address",
        metavar="tcp://HOST:PORT",
        help="Dask scheduler for --task-runner dask (default: a local cluster)",
    )

    verify = commands.add_parser(
        "verify",
        help="check that every file of an export is there with its recorded checksum",
        description="Re-read the export at DST (one export, variant folders, or a dataset layout) and "
        "check every file its state and tasks.json name against the checksum recorded when it was "
        "written. Exit 0: all present and unchanged; 1: each missing or changed file on its own line; "
        "2: no export at DST, or the store cannot be reached.",
    )
    verify.add_argument("destination", metavar="DST", help="s3://bucket/prefix or a local folder")
    _store_arguments(verify)
    verify.add_argument(
        "--lock-timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="while a run writes DST, wait this long for it to publish before checking (default: 3600)",
    )

    release = commands.add_parser(
        "release",
        help="make, list and compare releases: named, immutable copies of an export (SPEC 9)",
        description="A release is a copy of an export, with release.json (every file's size and sha256), "
        "that no later run, --prune or --replace-layout touches.",
    )
    actions = release.add_subparsers(dest="release_command", required=True, metavar="{create,list,diff}")
    create = actions.add_parser(
        "create",
        help="copy EXPORT to RELEASE (an empty location) and write its release.json",
        description="Copy the export at EXPORT (every file its state records, tasks.json, the indexes) to "
        "RELEASE, an empty location outside EXPORT, under the export's lease; release.json is written last. "
        "S3 to S3 on one endpoint the store copies. Exit 0: released; 2: RELEASE not empty, no export at "
        "EXPORT, a bad name, a bucket without Object Lock for --retain-days.",
    )
    create.add_argument("export", metavar="EXPORT", help="the export: s3://bucket/prefix or a local folder")
    create.add_argument("release", metavar="RELEASE", help="where the release goes: empty, outside EXPORT")
    create.add_argument("--name", metavar="NAME", help="the release's name (default: RELEASE's last path part)")
    create.add_argument(
        "--retain-days",
        type=_positive,
        metavar="N",
        help="S3 Object Lock retention (compliance mode) of N days on every object: the bucket must have Object Lock",
    )
    create.add_argument(
        "--lock-timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="while a run writes EXPORT, wait this long before giving up with exit 2 (default: 3600)",
    )
    _store_arguments(create)
    listing = actions.add_parser(
        "list", help="the releases made from EXPORT", description="The releases made from EXPORT."
    )
    listing.add_argument("export", metavar="EXPORT")
    _store_arguments(listing)
    diff = actions.add_parser(
        "diff",
        help="the tasks added, removed and changed from release A to release B",
        description="The tasks added, removed and changed (by their files' sha256) from release A to release B.",
    )
    diff.add_argument("a", metavar="A")
    diff.add_argument("b", metavar="B")
    _store_arguments(diff)
    unlock = commands.add_parser(
        "unlock",
        help="free a destination a killed run left held",
        description="Remove the destination's lease object (DST/.rbexport/lock) when its holder is not "
        "live (expired, or not a lease), and free its Prefect concurrency slot when PREFECT_API_URL names "
        "a server and no live run holds it. Refuses (exit 2, naming the holder) while the holder is "
        "alive, unless it ran on this host and its process is gone. A killed run's hold also frees by "
        "itself: its lease expires 120 s after its last renewal.",
    )
    unlock.add_argument("destination", metavar="DST", help="s3://bucket/prefix or a local folder")
    _store_arguments(unlock)

    demo = commands.add_parser(
        "demo",
        help="export a generated sample project on a local SeaweedFS",
        description="Start SeaweedFS on loopback, upload a sample project, export it "
        "in the standard and the semantic structure, print the trees, stop the server.",
    )
    demo.add_argument("--output", metavar="DIR", help="also copy the exports into this local folder")
    demo.add_argument(
        "--keep",
        action="store_true",
        help="instead of exporting: start SeaweedFS with the sample project, print the variables to "
        "export for the README's deployment steps, and keep it running until Ctrl-C",
    )
    return parser


def _store_arguments(command: argparse.ArgumentParser) -> None:
    """How to reach S3: the same for every command that reads or writes a store."""
    command.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="S3 endpoint, e.g. http://127.0.0.1:8333 (default: AWS_ENDPOINT_URL, else AWS)",
    )
    command.add_argument(
        "--credentials-block",
        metavar="NAME",
        help="read the S3 keys from this Prefect block: aws-credentials/NAME or minio-credentials/NAME "
        "(prefect-aws; with their endpoint and region), or secret/NAME or NAME (a Secret holding JSON keys); "
        "default: boto3's standard chain",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def option_help(field: str, sets: object = None) -> str:
    """The help of a run flag that sets ExportOptions' `field`: the field's description (its
    first sentence when longer than SUMMARY_CHARS), after `field = value:` when the flag sets
    a value of its own (`sets`: --uncompressed sets compress false)."""
    description = " ".join((ExportOptions.model_fields[field].description or "").split())
    if len(description) > SUMMARY_CHARS:
        description = re.split(r"(?<=\.)\s+", description, maxsplit=1)[0]
    if sets is not None:
        shown = str(sets).lower() if isinstance(sets, bool) else str(sets)
        description = f"{field} = {shown}: {description}"
    return description.replace("%", "%%")  # argparse formats help with %


def export_options(arguments: argparse.Namespace) -> ExportOptions:
    """The ExportOptions the run command's flags set: each field from the flag whose dest it
    is; --images-as-nifti implies --with-images."""
    fields = {
        name: getattr(arguments, name) for name in ExportOptions.model_fields if name not in OPTIONS_WITHOUT_FLAGS
    }
    fields["with_images"] = arguments.with_images or arguments.image_format == "nifti"
    return ExportOptions(**fields)


def _option_flag(
    group: argparse.ArgumentParser | argparse._ArgumentGroup, field: str, *flags: str, **settings: Any
) -> None:
    """A run flag that sets ExportOptions' `field`: its dest, its default and its help are the field's."""
    sets = settings.get("const") if settings.get("action") == "store_const" else None
    if settings.get("action") == "store_false":
        sets = False
    group.add_argument(
        *flags, dest=field, default=ExportOptions.model_fields[field].default, help=option_help(field, sets), **settings
    )
