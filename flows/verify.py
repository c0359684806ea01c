"""The verify flow: re-read an export and check every file against its recorded checksum."""

# No `from __future__ import annotations` here: a served run gets this flow pickled by value
# (deployments/flow_processes.py), and Prefect builds the parameters' model from the function's
# annotations, which must then be the types themselves, not their names.

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from rbexport.display import shown
from rbexport.errors import ConfigurationError, ExportDamaged, StorageError
from rbexport.flows.export import refuse_placeholders
from rbexport.lease import WAIT_SECONDS
from rbexport.storage import S3Access
from rbexport.tasks.credentials import s3_access
from rbexport.tasks.export import RETRY_STORAGE, expected_failures_as_states, failed
from rbexport.verify import VerifyResult, verify_settled


@task(name="verify-files", **RETRY_STORAGE)
@expected_failures_as_states
def verify_files(destination: str, access: S3Access, lock_timeout: float) -> VerifyResult:
    result = verify_settled(destination, access, lock_timeout, notify=get_run_logger().warning)
    get_run_logger().info("%s", result.summary())
    return result


@flow(name="verify-export", validate_parameters=True)
def verify_export_flow(
    destination: str,
    endpoint_url: str | None = None,
    credentials_block: str | None = None,
    lock_timeout: float = WAIT_SECONDS,
) -> VerifyResult:
    """Check that every file of an export is there with the checksum recorded when it was written.

    Reads every file the export's state and tasks.json name (segmentations, image items when
    images were exported, a dataset layout's images and labels, the indexes). Ends Failed,
    with a table artifact of the files missing or changed, when any is.

    Args:
        destination: The export: s3://bucket/prefix, or a folder on the worker. One export,
            variant folders (destination/standard/, ...) or a dataset layout.
        endpoint_url: The S3 endpoint, such as `http://127.0.0.1:8333`. None (the default):
            the worker's AWS_ENDPOINT_URL, else AWS S3.
        credentials_block: A Prefect block with the S3 keys, as for export-project: a
            Secret (NAME or secret/NAME), aws-credentials/NAME or minio-credentials/NAME.
            None (the default): boto3's standard chain on the worker.
        lock_timeout: Seconds to wait while a run writes the export (it is checked once that
            run has published, never halfway); then the run fails with "destination busy".
    """
    try:
        refuse_placeholders(destination=destination, endpoint_url=endpoint_url)
        access = s3_access(endpoint_url, credentials_block)
        result = verify_files(destination, access, lock_timeout, return_state=True).result()
    except (ConfigurationError, StorageError) as error:
        get_run_logger().error("cannot verify: %s", error)
        return failed(error)
    create_markdown_artifact(key="verify-report", markdown=result.to_markdown(), description=result.summary())
    if result.ok:
        return result
    create_table_artifact(key="verify-problems", table=result.rows(), description=result.summary())
    for problem in result.problems[:50]:
        get_run_logger().error("%s", shown(problem.line()))
    return failed(ExportDamaged(result.summary(), result), result.summary())
