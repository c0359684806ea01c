"""Prefect events for new objects in a source: what the upload trigger listens for."""

from __future__ import annotations

from prefect.events import emit_event

from rbexport.notifications import EVENT_NAME, CreatedObject


def emit_created(objects: list[CreatedObject]) -> None:
    """One `rbexport.object.created` event per object, its URL as the resource id."""
    for item in objects:
        emit_event(
            event=EVENT_NAME,
            resource={"prefect.resource.id": item.url, "prefect.resource.name": item.url.rsplit("/", 1)[-1]},
            payload={"size": item.size, "etag": item.etag, "how": item.how},
        )
