"""`S3Storage`: a bucket prefix on any S3-compatible endpoint, through boto3.

Every object sent carries a checksum the store verifies on receipt (see rbexport.storage).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Iterator
from datetime import datetime
from typing import BinaryIO

from ..display import shown
from ..errors import ConfigurationError, ObjectNotFoundError, RefusedObjectError, TransientStorageError
from .access import S3Access
from .base import Copied, ObjectInfo, Storage
from .clients import shared_client
from .errors import s3_errors
from .location import join_url, normalize_key

# Objects above this go up in parts, several at once.
MULTIPART_THRESHOLD = 64 * 1024**2
# S3's CopyObject takes objects up to 5 GiB; larger ones are copied in parts (UploadPartCopy).
COPY_PART_THRESHOLD = 5 * 1024**3
# Each part of a multipart upload carries its SHA-256, which the store checks on receipt.
PART_CHECKSUMS = {"ChecksumAlgorithm": "SHA256"}


class S3Storage(Storage):
    """A bucket prefix on any S3-compatible endpoint. Picklable: it holds no client (see `client`)."""

    def __init__(self, bucket: str, prefix: str = "", access: S3Access | str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.access = S3Access.of(access)
        self.endpoint_url = self.access.endpoint_url
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    @property
    def client(self):
        """The process's boto3 client for this access (clients are thread-safe; making one
        takes ~16 ms, so every storage and thread of a process shares it)."""
        return shared_client(self.access)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def read(self, key: str) -> bytes:
        with s3_errors(self.url_of(key)):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def write(self, key: str, data: bytes, sha256: str | None = None) -> None:
        from boto3.s3.transfer import TransferConfig

        with s3_errors(self.url_of(key)):
            if len(data) < MULTIPART_THRESHOLD:
                digest = bytes.fromhex(sha256) if sha256 else hashlib.sha256(data).digest()
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self._key(key),
                    Body=data,
                    ChecksumSHA256=base64.b64encode(digest).decode("ascii"),  # the store checks it
                )
            else:
                config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, max_concurrency=4)
                self.client.upload_fileobj(
                    io.BytesIO(data), self.bucket, self._key(key), ExtraArgs=dict(PART_CHECKSUMS), Config=config
                )

    def open(self, key: str) -> BinaryIO:
        with s3_errors(self.url_of(key)):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]

    def write_stream(self, key: str, stream: BinaryIO | io.RawIOBase) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, max_concurrency=4)
        with s3_errors(self.url_of(key)):
            self.client.upload_fileobj(
                stream, self.bucket, self._key(key), ExtraArgs=dict(PART_CHECKSUMS), Config=config
            )

    def copy_from(self, source: Storage, source_key: str, key: str, size: int | None = None) -> Copied:
        """On one endpoint with the same credentials the store copies: no byte comes here."""
        if not (isinstance(source, S3Storage) and source.access == self.access):
            return super().copy_from(source, source_key, key)
        if size is None:
            info = source.stat(source_key)
            if info is None:
                raise ObjectNotFoundError(source.url_of(source_key))
            size = info.size
        copy_source = {"Bucket": source.bucket, "Key": source._key(source_key)}
        with s3_errors(self.url_of(key)):
            if size <= COPY_PART_THRESHOLD:
                # AWS computes the copy's SHA-256 when asked; stores that do not (SeaweedFS) give its ETag.
                answer = self.client.copy_object(
                    Bucket=self.bucket, Key=self._key(key), CopySource=copy_source, ChecksumAlgorithm="SHA256"
                ).get("CopyObjectResult", {})
                sha256 = _full_object_sha256(answer)
                etag = str(answer.get("ETag") or "").strip('"')
            else:
                from boto3.s3.transfer import TransferConfig

                config = TransferConfig(multipart_threshold=COPY_PART_THRESHOLD, max_concurrency=4)
                self.client.copy(copy_source, self.bucket, self._key(key), Config=config)
                sha256, etag = None, ""
        if sha256 is None and not etag:
            info = self.stat(key)
            if info is None:
                raise TransientStorageError(f"{self.url_of(key)}: the copy is not there after the store made it")
            etag = info.etag
        return Copied(size, sha256, None if sha256 else etag)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full_prefix = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        with s3_errors(join_url(self.url, prefix)):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        item["Key"][strip:], item["Size"], item["ETag"].strip('"'), item["LastModified"].timestamp()
                    )

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            with s3_errors(self.url_of(key)):
                head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ObjectNotFoundError:
            return None
        return ObjectInfo(key, head["ContentLength"], head["ETag"].strip('"'), head["LastModified"].timestamp())

    def delete(self, key: str) -> None:
        if normalize_key(key) is None:  # `..` parts: a store that resolves them would reach past the prefix
            raise RefusedObjectError(shown(self.url_of(key)), f"the key leaves {self.url}")
        with s3_errors(self.url_of(key)):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        try:
            with s3_errors(self.url_of(key)):
                answer = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
                return answer["Body"].read(), answer["ETag"]
        except ObjectNotFoundError:
            return None

    def write_if(self, key: str, data: bytes, tag: str | None) -> str:
        """A conditional PutObject (If-None-Match / If-Match: AWS S3 since 2024, SeaweedFS)."""
        condition = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag}
        with s3_errors(self.url_of(key)):
            return self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)["ETag"]

    def delete_if(self, key: str, tag: str) -> None:
        with s3_errors(self.url_of(key)):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key), IfMatch=tag)

    def object_lock_enabled(self) -> bool:
        """Whether the bucket has S3 Object Lock (it can only be switched on when the bucket is made)."""
        try:
            with s3_errors(f"s3://{self.bucket}"):
                answer = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except (ConfigurationError, ObjectNotFoundError, TransientStorageError) as error:
            if "ObjectLockConfigurationNotFound" in str(error) or "object lock" in str(error).lower():
                return False
            raise
        return answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

    def retain(self, key: str, until: datetime) -> None:
        """Object Lock retention in compliance mode: no one can delete or overwrite this version
        of the object before `until` (an Object Lock bucket only)."""
        with s3_errors(self.url_of(key)):
            self.client.put_object_retention(
                Bucket=self.bucket, Key=self._key(key), Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until}
            )

    def create_bucket(self, object_lock: bool = False) -> None:
        """Create the bucket if it does not exist (demo and tests); `object_lock`: with S3 Object Lock."""
        with s3_errors(f"s3://{self.bucket}"):
            try:
                extra = {"ObjectLockEnabledForBucket": True} if object_lock else {}
                self.client.create_bucket(Bucket=self.bucket, **extra)
            except self.client.exceptions.BucketAlreadyOwnedByYou:
                pass

    def endpoint_description(self) -> str:
        """The endpoint requests go to, as a person would name it in a message."""
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return endpoint or "AWS S3 (no endpoint_url set)"

    def check_reachable(self) -> None:
        where = f"s3://{self.bucket} at {self.endpoint_description()}"
        try:
            with s3_errors(f"s3://{self.bucket}"):
                self.client.head_bucket(Bucket=self.bucket)
        except ObjectNotFoundError:
            raise ConfigurationError(f"bucket {self.bucket!r} does not exist ({where})") from None
        except TransientStorageError as error:
            reason = str(error).removeprefix(f"s3://{self.bucket}: ")
            raise ConfigurationError(f"cannot reach {where}: {reason}") from None


def _full_object_sha256(answer: dict) -> str | None:
    """The hex SHA-256 of a whole object from a CopyObjectResult, when the store gave one
    (a composite checksum of parts, `...-N`, is not the object's)."""
    value = answer.get("ChecksumSHA256")
    if not isinstance(value, str) or "-" in value or answer.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
        return None
    try:
        digest = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return digest.hex() if len(digest) == 32 else None
