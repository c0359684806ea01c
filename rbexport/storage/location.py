"""Where a storage lies (`Location`: `s3://bucket/prefix` or a local folder), and keys:
paths relative to a storage's root, always with `/`, never leaving it."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]$")


def join_url(url: str, key: str) -> str:
    return f"{url.rstrip('/')}/{key}" if key else url


def normalize_key(key: str) -> str | None:
    """`key` with `.` and `..` resolved, or None when it would leave the root."""
    if not key or key.startswith("/") or "\\" in key or "\0" in key:
        return None
    normalized = posixpath.normpath(key)
    if normalized in (".", "..") or normalized.startswith("../"):
        return None
    return normalized


@dataclass(frozen=True)
class Location:
    """A parsed source or destination: `s3://bucket/prefix` or a local folder."""

    scheme: str  # "s3" or "file"
    bucket: str  # "" for local folders
    path: str  # key prefix in the bucket (no slashes at the ends), or the folder

    @classmethod
    def parse(cls, text: str) -> Location:
        text = text.strip()
        if not text:
            raise ConfigurationError("empty location: give s3://bucket/prefix or a local folder")
        if text.startswith("s3://"):
            bucket, _, prefix = text[len("s3://") :].partition("/")
            if not _BUCKET_NAME.match(bucket):
                raise ConfigurationError(
                    f"{text!r}: {bucket!r} is not a valid bucket name (3 to 63 lowercase letters, digits, '.', '-')"
                )
            prefix = prefix.strip("/")
            if prefix and normalize_key(prefix) != prefix:
                raise ConfigurationError(f"{text!r}: the prefix may not hold '.', '..' or empty parts")
            return cls("s3", bucket, prefix)
        if "://" in text:
            scheme = text.split("://", 1)[0]
            if scheme != "file":
                raise ConfigurationError(f"{text!r}: unsupported scheme {scheme!r}; use s3:// or a local folder")
            text = text[len("file://") :]
        return cls("file", "", str(Path(text).expanduser().resolve()))

    @property
    def url(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.path}" if self.path else f"s3://{self.bucket}"
        return self.path

    def child(self, key: str) -> Location:
        if self.scheme == "s3":
            return Location("s3", self.bucket, f"{self.path}/{key}".strip("/"))
        return Location("file", "", str(Path(self.path) / key))

    def parent(self) -> Location | None:
        """The folder or prefix this one lies in; None for a bucket or the file system's root."""
        if self.scheme == "s3":
            return Location("s3", self.bucket, self.path.rpartition("/")[0]) if self.path else None
        parent = str(Path(self.path).parent)
        return Location("file", "", parent) if parent != self.path else None

    def contains(self, other: Location) -> bool:
        """Whether `other` is this location or lies inside it."""
        if self.scheme != other.scheme or self.bucket != other.bucket:
            return False
        if self.scheme == "s3":
            return not self.path or other.path == self.path or other.path.startswith(self.path + "/")
        return Path(other.path).is_relative_to(self.path)
