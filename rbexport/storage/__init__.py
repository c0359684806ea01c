"""One small interface over where exports are read from and written to.

`S3Storage` (boto3, any S3-compatible endpoint) and `LocalStorage` (a folder) are the
only places that talk to a store. Both speak in *keys*: paths relative to the storage's
root, always with `/`. Errors come out as the kinds in `errors.py`, never as boto3's,
and never with a credential in them.

Credentials come from boto3's standard chain (environment, profiles, instance roles), or
explicitly in an `S3Access` (from a Prefect block, see tasks/credentials.py); the endpoint
from `--endpoint-url`, the block, or `AWS_ENDPOINT_URL`.

Every object sent to S3 carries a checksum the store verifies on receipt, whatever
botocore's defaults or AWS_REQUEST_CHECKSUM_CALCULATION say: a PutObject its SHA-256
(x-amz-checksum-sha256, the same hash the state records), each part of a multipart
upload its own SHA-256. A store that received other bytes refuses them (BadDigest) and
stores nothing; that comes out as a TransientStorageError, since sending again may work.

`open_storage` is the one way to get a storage for a location: one per location and access
in a process, so each thread's S3 client is reused. The process's boto3 session and
clients are made once and kept; `reset_clients()` forgets them, so that boto3 reads the
environment anew (a test that changes the keys in it calls it).

One module per concern: `base` (the `Storage` interface), `location` (`Location`, keys),
`access` (`S3Access`, `S3Credentials`), `local` (`LocalStorage`), `s3` (`S3Storage`),
`clients` (the boto3 session and clients), `errors` (boto3's errors as rbexport's).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .access import S3Access, S3Credentials
from .base import STREAM_CHUNK, Copied, ObjectInfo, Storage
from .clients import reset_clients
from .local import LocalStorage
from .location import Location, join_url, normalize_key
from .s3 import COPY_PART_THRESHOLD, MULTIPART_THRESHOLD, S3Storage

__all__ = [
    "COPY_PART_THRESHOLD",
    "MULTIPART_THRESHOLD",
    "STREAM_CHUNK",
    "Copied",
    "LocalStorage",
    "Location",
    "ObjectInfo",
    "S3Access",
    "S3Credentials",
    "S3Storage",
    "Storage",
    "join_url",
    "normalize_key",
    "open_storage",
    "reset_clients",
]


def open_storage(location: Location | str, access: S3Access | str | None = None) -> Storage:
    """The storage for `location`; `access` is an S3Access or just an endpoint URL.

    One storage object per location and access in a process (storages hold no client:
    `reset_clients()` is what makes boto3 read the environment anew)."""
    if isinstance(location, str):
        location = Location.parse(location)
    return _opened(location, S3Access.of(access))


@lru_cache(maxsize=64)
def _opened(location: Location, access: S3Access) -> Storage:
    if location.scheme == "s3":
        return S3Storage(location.bucket, location.path, access)
    return LocalStorage(Path(location.path))
