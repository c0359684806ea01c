"""The release flow: copy an export to a named, immutable release (rbexport.releases)."""

# No `from __future__ import annotations` here: a served run gets this flow pickled by value
# (deployments/flow_processes.py), and Prefect builds the parameters' model from the function's
# annotations, which must then be the types themselves, not their names.

from datetime import UTC, datetime
from functools import partial

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.logging import get_run_logger

from rbexport.errors import ConfigurationError
from rbexport.lease import WAIT_SECONDS
from rbexport.releases import Release, create_release
from rbexport.storage import Location
from rbexport.tasks.credentials import s3_access
from rbexport.tasks.export import failed
from rbexport.tasks.one_writer import one_writer_of

RELEASE_CREATED = "rbexport.release.created"


@flow(name="release-export", validate_parameters=True)
def release_export(
    export: str,
    releases: str,
    name: str | None = None,
    retain_days: int | None = None,
    endpoint_url: str | None = None,
    credentials_block: str | None = None,
    lock_timeout: float = WAIT_SECONDS,
) -> Release:
    """Make a release of an export: a named, immutable copy with its release.json (SPEC 9).

    Args:
        export: The export to release: s3://bucket/prefix, or a folder on the worker.
        releases: Where releases go: the release is `<releases>/<name>`, an empty location
            outside the export.
        name: The release's name (letters, digits, _ . -). None (the default): the date the
            run starts, UTC, as YYYY-MM-DD (a scheduled release is named by its day).
        retain_days: S3 Object Lock retention (compliance mode) for that many days on every
            object; the bucket must have Object Lock. None: no retention.
        endpoint_url: The S3 endpoint; None: the credentials block's, else AWS_ENDPOINT_URL.
        credentials_block: The Prefect block with the S3 keys (as for the export flow).
        lock_timeout: Seconds to wait while a run writes the export.
    """
    logger = get_run_logger()
    release_name = name or datetime.now(UTC).strftime("%Y-%m-%d")
    try:
        location = Location.parse(releases).child(release_name).url
        access = s3_access(endpoint_url, credentials_block)
        hold = partial(one_writer_of, timeout=lock_timeout, notify=logger.warning)
        release = create_release(export, location, access, release_name, retain_days, notify=logger.warning, hold=hold)
    except ConfigurationError as error:
        # An answer, not a crash: one line in the run's log and its state, no traceback.
        logger.error("cannot release: %s", error)
        return failed(error)
    create_markdown_artifact(key="release-report", markdown=release.to_markdown(), description=release.summary())
    emit_event(
        RELEASE_CREATED,
        resource={"prefect.resource.id": f"rbexport.release.{release.url}", "prefect.resource.name": release.name},
        related=[
            {
                "prefect.resource.id": f"rbexport.destination.{release.export}",
                "prefect.resource.role": "export",
            }
        ],
        payload={
            "name": release.name,
            "release": release.url,
            "export": release.export,
            "tasks": release.tasks,
            "files": len(release.files),
            "bytes": release.bytes,
            "retain_until": release.retain_until,
        },
    )
    logger.info("%s", release.summary())
    return release
