"""New objects in a source: from S3 event notifications, or from listing since a watermark.

Both give `CreatedObject`s, which the Prefect side turns into one event each. The body
format is the standard `Records[]` JSON that AWS S3, MinIO, SeaweedFS and others post.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from .storage import ObjectInfo, Storage

EVENT_NAME = "rbexport.object.created"


class NotificationError(ValueError):
    """The body is not an S3 event notification; the reason is safe to send back."""


@dataclass(frozen=True)
class CreatedObject:
    url: str  # s3://bucket/key, or the object's path for a local source
    size: int | None = None
    etag: str | None = None
    how: str = ""  # the S3 event name, or "listing"


def created_objects(body: bytes) -> list[CreatedObject]:
    """The objects an S3 event notification says were created (other events are ignored)."""
    try:
        notification = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise NotificationError("body is not JSON") from None
    if not isinstance(notification, dict):
        raise NotificationError("body is not a JSON object")
    if notification.get("Type") == "Notification" and isinstance(notification.get("Message"), str):
        return created_objects(notification["Message"].encode("utf-8"))  # delivered through AWS SNS
    if notification.get("Type") == "SubscriptionConfirmation":
        raise NotificationError(f"an SNS subscription to confirm: open {notification.get('SubscribeURL')}")
    if notification.get("Event") == "s3:TestEvent":  # sent by AWS when notifications are set up
        return []
    records = notification.get("Records")
    if not isinstance(records, list):
        raise NotificationError("no Records list")
    created = []
    for position, record in enumerate(records):
        try:
            event_name = record["eventName"]
            bucket = record["s3"]["bucket"]["name"]
            s3_object = record["s3"]["object"]
            key = unquote_plus(s3_object["key"])  # keys arrive URL-encoded
        except (KeyError, TypeError):
            raise NotificationError(f"Records[{position}] lacks eventName, s3.bucket.name or s3.object.key") from None
        if not all(isinstance(value, str) and value for value in (event_name, bucket, key)):
            raise NotificationError(f"Records[{position}] has an empty or non-text name")
        if "ObjectCreated" in event_name:
            created.append(
                CreatedObject(f"s3://{bucket}/{key}", s3_object.get("size"), s3_object.get("eTag"), event_name)
            )
    return created


@dataclass
class Watermark:
    """How far a watcher has seen: the newest modification time, and the keys seen at it."""

    modified: float = 0.0
    keys: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"modified": self.modified, "keys": self.keys}

    @classmethod
    def from_json(cls, value: object) -> Watermark:
        if isinstance(value, dict) and isinstance(value.get("modified"), (int, float)):
            return cls(float(value["modified"]), [str(key) for key in value.get("keys", [])])
        return cls()


def baseline(listing: Iterable[ObjectInfo]) -> Watermark:
    """The watermark of a first watch: everything already there counts as seen, so the
    watcher's first look emits nothing (exports of what was there are the nightly's job)."""
    infos = list(listing)
    if not infos:
        return Watermark()
    newest = max(info.modified for info in infos)
    return Watermark(newest, sorted(info.key for info in infos if info.modified == newest))


def objects_since(
    source: Storage, listing: Iterable[ObjectInfo], watermark: Watermark
) -> tuple[list[CreatedObject], Watermark]:
    """Objects newer than the watermark, oldest first, and the watermark after them."""
    seen_at_mark = set(watermark.keys)
    new = sorted(
        (
            info
            for info in listing
            if info.modified > watermark.modified
            or (info.modified == watermark.modified and info.key not in seen_at_mark)
        ),
        key=lambda info: (info.modified, info.key),
    )
    if not new:
        return [], watermark
    newest = new[-1].modified
    keys = [info.key for info in new if info.modified == newest]
    if newest == watermark.modified:
        keys = sorted(seen_at_mark | set(keys))
    created = [CreatedObject(source.url_of(info.key), info.size, info.etag, "listing") for info in new]
    return created, Watermark(newest, keys)
