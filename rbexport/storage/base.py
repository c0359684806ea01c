"""The one interface every storage implements (`Storage`), what it answers with
(`ObjectInfo`, `Copied`), and the streaming copy and digest every storage shares."""

from __future__ import annotations

import hashlib
import io
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .errors import s3_errors
from .location import join_url

STREAM_CHUNK = 1024**2


@dataclass(frozen=True)
class Copied:
    """What a copy stored: its size, and its sha256 when the bytes passed through here
    (or the store computed it); else the ETag the store gave the copy."""

    bytes: int
    sha256: str | None  # None for a copy made by the store itself that gave no SHA-256
    etag: str | None = None  # a store-side copy's ETag, when there is no sha256


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # S3 ETag, or "<mtime_ns>-<size>" for local files
    modified: float = 0.0  # seconds since the epoch


class Storage(ABC):
    """A root (bucket prefix or folder) holding objects addressed by relative keys."""

    url: str

    @abstractmethod
    def read(self, key: str) -> bytes: ...

    @abstractmethod
    def write(self, key: str, data: bytes, sha256: str | None = None) -> None:
        """Store `data` at `key` in one step: a reader sees the old object or the new one.

        `sha256`: the hex SHA-256 of `data` when the caller has it (saves hashing it again).
        """

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """The object as a stream to read in chunks (close it when done)."""

    @abstractmethod
    def write_stream(self, key: str, stream: BinaryIO | io.RawIOBase) -> None:
        """Store what `stream` yields at `key`, never holding all of it in memory."""

    def copy_from(self, source: Storage, source_key: str, key: str, size: int | None = None) -> Copied:
        """Copy an object of `source` to `key`, byte for byte, streaming it through here.

        Storages that can have the store copy for them (S3 to S3 on one endpoint) do;
        `size`, when known, saves them asking for it.
        """
        with s3_errors(source.url_of(source_key)), source.open(source_key) as stream:
            hashing = HashingReader(stream)
            self.write_stream(key, hashing)
        return Copied(hashing.size, hashing.sha256.hexdigest())

    def digest(self, key: str) -> tuple[int, str]:
        """The object's size and hex SHA-256, read as a stream (never whole in memory)."""
        with s3_errors(self.url_of(key)), self.open(key) as stream:
            hashing = HashingReader(stream)
            while hashing.read(STREAM_CHUNK):
                pass
        return hashing.size, hashing.sha256.hexdigest()

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def check_reachable(self) -> None:
        """Raise ConfigurationError when the root cannot be used at all."""

    # Compare-and-swap on one small object (rbexport.lease): `tag` is the store's version of
    # what was read or written; a write or delete whose expectation no longer holds raises
    # PreconditionFailed instead of overwriting another writer's object.

    @abstractmethod
    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        """The object and its tag, or None when it does not exist."""

    @abstractmethod
    def write_if(self, key: str, data: bytes, tag: str | None) -> str:
        """Write `data` if the object still has `tag` (None: if it does not exist); its new tag."""

    @abstractmethod
    def delete_if(self, key: str, tag: str) -> None:
        """Delete the object if it still has `tag`."""

    def url_of(self, key: str) -> str:
        return join_url(self.url, key)

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None


class HashingReader(io.RawIOBase):
    """A stream that counts and hashes what is read through it."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(size)
        self.sha256.update(chunk)
        self.size += len(chunk)
        return chunk

    def readinto(self, buffer) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)
