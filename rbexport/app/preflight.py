"""Checks before the Prefect flow starts: what is wrong with a run's configuration is said
in well under a second, not after Prefect has been imported and a flow run created.

The flow checks the same again (a deployment's run has no CLI in front of it); these are
only the cheap ones: the source and destination can be reached (a bucket that is not
there, an endpoint that does not answer, denied access), a local source folder exists and
holds tasks, and a credentials block's name has a form the flow accepts. With a
credentials block the S3 keys are in the block, so the stores are checked by the flow.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from rbexport.errors import ConfigurationError
from rbexport.storage import Location, S3Access, open_storage


def check_before_flow(source: str, destination: str, endpoint_url: str | None, credentials_block: str | None) -> None:
    """Raise ConfigurationError for what would stop the flow at its start."""
    if credentials_block:
        from rbexport.tasks.credentials import INSTALL_AWS, KINDS, parse_block_name  # no Prefect import

        kind, name = parse_block_name(credentials_block)
        if kind != "secret" and find_spec("prefect_aws") is None:
            raise ConfigurationError(
                f"the credentials block {kind}/{name} ({KINDS[kind]}) needs prefect-aws, which is not installed: "
                f"{INSTALL_AWS}"
            )
    access = S3Access(endpoint_url)
    source_location = Location.parse(source)
    for location in (source_location, Location.parse(destination)):
        if location.scheme == "s3" and credentials_block:
            continue
        open_storage(location, access).check_reachable()
    if source_location.scheme == "file":
        _check_local_source(Path(source_location.path))


def _check_local_source(root: Path) -> None:
    if not root.is_dir():
        raise ConfigurationError(f"the source folder {root} does not exist")
    # exists(), not is_file(): a tasks.json that is a pipe or a link is the source reader's to refuse, by name.
    if not (root / "tasks.json").exists() and not any((root / "tasks").glob("*.json")):
        raise ConfigurationError(f"no tasks.json or tasks/*.json in {root}")
