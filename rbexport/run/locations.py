"""Where a run reads and writes: the source and the destination checked against each other
before anything is read (`check_locations`), and the lease that makes the run the
destination's one writer (`destination_lease`, rbexport.lease)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..display import shown
from ..errors import ConfigurationError
from ..export_tree import EXPORT_FOLDERS, RBEXPORT_FOLDER, ROOT_FILES
from ..lease import DestinationLease
from ..model import ExportRequest
from ..releases import refuse_release_destination
from ..storage import Location, open_storage
from ..variants import resolve_variants


def check_locations(
    source_url: str, destination_url: str, variant_folders: Sequence[str] | None = None
) -> tuple[Location, Location]:
    """Parse both locations; refuse a destination inside the source, or a source anywhere
    in the export tree (a variant folder, segmentations/, images/, a dataset's folders,
    the state, the files at an export root): the source is never written to, nor deleted."""
    source, destination = Location.parse(source_url), Location.parse(destination_url)
    if source.contains(destination):
        raise ConfigurationError(
            f"the destination {shown(destination.url)} lies inside the source {shown(source.url)}; "
            "the source is never written to"
        )
    roots = [destination.child(name) for name in variant_folders] if variant_folders else [destination]
    if destination.child(RBEXPORT_FOLDER).contains(source):  # the lease, and a single export's state
        raise ConfigurationError(
            f"the source {shown(source.url)} lies inside {shown(destination.child(RBEXPORT_FOLDER).url)}, "
            "which holds the export's own files"
        )
    for root in roots:
        if root != destination and root.contains(source):
            raise ConfigurationError(
                f"the source {shown(source.url)} lies inside {shown(root.url)}, which this run exports to"
            )
        for written in (*EXPORT_FOLDERS, RBEXPORT_FOLDER, *ROOT_FILES):
            if root.child(written).contains(source):
                raise ConfigurationError(
                    f"the source {shown(source.url)} lies inside {shown(root.child(written).url)}, "
                    "which the export overwrites"
                )
    return source, destination


def destination_lease(
    request: ExportRequest, owner: str | None = None, notify: Callable[[str], None] | None = None
) -> DestinationLease:
    """The lease that makes this run the destination's one writer (rbexport.lease); the
    destination is checked first, so a bad one fails here with its own message."""
    resolved = resolve_variants(request.options, request.variants)
    variant_folders = [variant.name for variant in resolved] if len(resolved) > 1 else None
    _, destination = check_locations(request.source, request.destination, variant_folders)
    storage = open_storage(destination.url, request.access)
    storage.check_reachable()
    refuse_release_destination(destination, request.access)  # before the lease writes there
    return DestinationLease(storage, owner, notify)
