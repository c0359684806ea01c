"""The watcher, for stores that cannot notify: list the source, emit an event per new object."""

# No `from __future__ import annotations` here: a served run gets this flow pickled by value
# (deployments/flow_processes.py), and Prefect builds the parameters' model from the function's
# annotations, which must then be the types themselves, not their names.

import hashlib

from prefect import flow
from prefect.logging import get_run_logger
from prefect.variables import Variable

from rbexport.errors import ConfigurationError, TransientStorageError
from rbexport.notifications import Watermark, baseline, objects_since
from rbexport.storage import open_storage
from rbexport.tasks.credentials import s3_access
from rbexport.tasks.events import emit_created
from rbexport.tasks.export import failed


def watermark_variable(source: str) -> str:
    """The Prefect variable that holds a source's watermark."""
    return "rbexport-watermark-" + hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


@flow(name="watch-source")
def watch_source(source: str, endpoint_url: str | None = None, credentials_block: str | None = None) -> int:
    """Emit an `rbexport.object.created` event for every object new since the last watch.

    The first watch of a source emits nothing: it records what is already there as the
    baseline (a flood of events for an existing project would start a full export).

    Args:
        source: The prefix to watch: s3://bucket/prefix or a local folder.
        endpoint_url: S3 endpoint; default the block's, else AWS_ENDPOINT_URL, else AWS.
        credentials_block: The Prefect block with the S3 keys (aws-credentials/NAME,
            minio-credentials/NAME, secret/NAME or NAME: a Secret); empty: boto3's chain.
    """
    try:
        storage = open_storage(source, s3_access(endpoint_url, credentials_block))
        name = watermark_variable(storage.url)
        recorded = Variable.get(name, default=None)
        listing = list(storage.list())
        if recorded is None:
            first = baseline(listing)
            Variable.set(name, first.to_json(), overwrite=True)
            get_run_logger().info(
                "first watch of %s: %d objects already there recorded as the baseline, no events for them; "
                "objects added from now on start exports (export what is there with export-manual)",
                storage.url,
                len(listing),
            )
            return 0
        created, next_watermark = objects_since(storage, listing, Watermark.from_json(recorded))
    except (ConfigurationError, TransientStorageError) as error:
        # An answer, not a crash: one line in the run's log and its state; the next watch tries again.
        get_run_logger().error("cannot watch %s: %s", source, error)
        return failed(error)
    emit_created(created)
    Variable.set(name, next_watermark.to_json(), overwrite=True)
    get_run_logger().info("%d new objects in %s", len(created), storage.url)
    return len(created)
