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
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import posixpath
import re
import shutil
import stat
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from pydantic import SecretStr

from .display import shown
from .errors import (
    AccessDeniedError,
    ConfigurationError,
    ObjectNotFoundError,
    PreconditionFailed,
    RefusedObjectError,
    TransientStorageError,
)

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]$")
# Objects above this go up in parts, several at once.
MULTIPART_THRESHOLD = 64 * 1024**2
# S3's CopyObject takes objects up to 5 GiB; larger ones are copied in parts (UploadPartCopy).
COPY_PART_THRESHOLD = 5 * 1024**3
STREAM_CHUNK = 1024**2
# Each part of a multipart upload carries its SHA-256, which the store checks on receipt.
PART_CHECKSUMS = {"ChecksumAlgorithm": "SHA256"}


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
        with _s3_errors(source.url_of(source_key)), source.open(source_key) as stream:
            hashing = _HashingReader(stream)
            self.write_stream(key, hashing)
        return Copied(hashing.size, hashing.sha256.hexdigest())

    def digest(self, key: str) -> tuple[int, str]:
        """The object's size and hex SHA-256, read as a stream (never whole in memory)."""
        with _s3_errors(self.url_of(key)), self.open(key) as stream:
            hashing = _HashingReader(stream)
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


@dataclass(frozen=True)
class S3Credentials:
    """Keys given explicitly (from a Prefect block), instead of boto3's standard chain."""

    access_key_id: str
    secret_access_key: SecretStr
    session_token: SecretStr | None = None

    @classmethod
    def from_mapping(cls, value: object, origin: str) -> S3Credentials:
        keys = value if isinstance(value, dict) else {}
        access, secret, token = (
            keys.get(name) for name in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
        )
        if not (isinstance(access, str) and access and isinstance(secret, str) and secret):
            raise ConfigurationError(
                f"{origin} must hold a JSON object with aws_access_key_id and aws_secret_access_key"
            )
        return cls(access, SecretStr(secret), SecretStr(token) if isinstance(token, str) and token else None)


@dataclass(frozen=True)
class S3Access:
    """How to reach S3: the endpoint, and explicit credentials or None for boto3's chain.

    The rest is None for boto3's defaults: `region_name` (signatures name it: a store with a
    region of its own refuses others), `profile_name` (keys from that profile of the AWS
    config files), `verify` (False: do not check the TLS certificate; a path: the CA bundle
    to check it with)."""

    endpoint_url: str | None = None
    credentials: S3Credentials | None = None
    region_name: str | None = None
    profile_name: str | None = None
    verify: bool | str | None = None

    @classmethod
    def of(cls, access: S3Access | str | None) -> S3Access:
        return access if isinstance(access, S3Access) else cls(access or None)


def open_storage(location: Location | str, access: S3Access | str | None = None) -> Storage:
    """A storage for `location`; `access` is an S3Access or just an endpoint URL."""
    if isinstance(location, str):
        location = Location.parse(location)
    if location.scheme == "s3":
        return S3Storage(location.bucket, location.path, access)
    return LocalStorage(Path(location.path))


class LocalStorage(Storage):
    """A folder. It reads regular files only, and only inside it: a symbolic link is
    followed when it leads to a file inside the folder, never out of it; a named pipe, a
    device or a socket is refused without being read (RefusedObjectError), so nothing in a
    folder can make a run hang or read endless bytes. It writes only inside the folder and
    never through a symbolic link: each folder on the way is opened without following one,
    and a file is written beside its target (with the umask's permissions, like any file
    the user writes) and renamed over it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)
        self._made_root = False  # by a compare-and-swap (`_exclusive`)

    def _parts(self, key: str) -> list[str]:
        normalized = normalize_key(key)
        if normalized is None:
            raise RefusedObjectError(join_url(shown(self.url), shown(key)), f"the path leaves {shown(self.url)}")
        return normalized.split("/")

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*self._parts(key))

    def _inside(self, key: str) -> str:
        """The key's file with every symbolic link resolved; refused when that leaves the root."""
        path = self._path(key)
        real = os.path.realpath(path)
        if not _within(real, os.path.realpath(self.root)):
            raise RefusedObjectError(shown(path), f"a symbolic link that leads outside {shown(self.url)}")
        return real

    def _open_regular(self, key: str) -> int:
        """A read-only descriptor of the key's file, once it is known to be a regular file."""
        real = self._inside(key)
        try:
            _regular_or_refuse(os.stat(real).st_mode, self._path(key))
            # Non-blocking, so that a file swapped for a pipe meanwhile cannot hang the open.
            handle = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFoundError(self.url_of(key)) from None
        except PermissionError:
            raise AccessDeniedError(f"permission denied reading {shown(self._path(key))}") from None
        except OSError as error:
            raise RefusedObjectError(shown(self._path(key)), f"cannot be read ({error.strerror})") from None
        try:
            _regular_or_refuse(os.fstat(handle).st_mode, self._path(key))
            os.set_blocking(handle, True)
        except BaseException as error:
            os.close(handle)
            if isinstance(error, IsADirectoryError):
                raise ObjectNotFoundError(self.url_of(key)) from None
            raise
        return handle

    def read(self, key: str) -> bytes:
        with os.fdopen(self._open_regular(key), "rb") as stream:
            try:
                return stream.read()
            except OSError as error:
                raise ConfigurationError(f"cannot read {shown(self._path(key))}: {error.strerror or error}") from None

    def write(self, key: str, data: bytes, sha256: str | None = None) -> None:
        self._replace(key, lambda target: target.write(data))

    def _folders(self, parts: list[str], create: bool) -> list[int]:
        """Descriptors of the root and of each folder in `parts`, each opened without
        following a symbolic link (made when `create`); the caller closes them."""
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        handles = [os.open(self.root, flags)]
        try:
            for depth, part in enumerate(parts):
                try:
                    handles.append(os.open(part, flags | os.O_NOFOLLOW, dir_fd=handles[-1]))
                    continue
                except FileNotFoundError:
                    if not create:
                        raise
                except OSError:
                    if os.path.islink(os.path.join(self.root, *parts[: depth + 1])):
                        raise RefusedObjectError(
                            shown(os.path.join(self.root, *parts[: depth + 1])),
                            "a symbolic link, and rbexport never writes or deletes through one "
                            "(remove it, or choose another destination)",
                        ) from None
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=handles[-1])
                handles.append(os.open(part, flags | os.O_NOFOLLOW, dir_fd=handles[-1]))
        except BaseException:
            for handle in handles:
                os.close(handle)
            raise
        return handles

    def _replace(self, key: str, fill) -> None:
        parts = self._parts(key)
        path = self.root.joinpath(*parts)
        try:
            folders = self._folders(parts[:-1], create=True)
            try:
                folder = folders[-1]
                # Write beside the target, then rename over it: readers never see half a file.
                temporary = f".rbexport-{uuid.uuid4().hex[:12]}.part"
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                handle = os.open(temporary, flags, 0o666, dir_fd=folder)  # the umask decides
                try:
                    with os.fdopen(handle, "wb") as target:
                        fill(target)
                    os.replace(temporary, parts[-1], src_dir_fd=folder, dst_dir_fd=folder)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(temporary, dir_fd=folder)
                    raise
            finally:
                for handle in folders:
                    os.close(handle)
        except PermissionError:
            raise AccessDeniedError(f"permission denied writing {shown(path)}") from None
        except RefusedObjectError:
            raise
        except OSError as error:
            raise ConfigurationError(f"cannot write {shown(path)}: {error.strerror or error}") from None

    def open(self, key: str) -> BinaryIO:
        return os.fdopen(self._open_regular(key), "rb")

    def write_stream(self, key: str, stream: BinaryIO | io.RawIOBase) -> None:
        self._replace(key, lambda target: shutil.copyfileobj(stream, target, STREAM_CHUNK))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Everything under `prefix` but folders, without opening it: a symbolic link to a
        file inside the root as that file; a pipe, device, socket or link out of the root
        as itself (listed, so that reading it is refused with a reason, never skipped)."""
        base = self.root / prefix if prefix else self.root
        root = os.path.realpath(self.root)
        if not base.is_dir() or not _within(os.path.realpath(base), root):
            return
        for path in sorted(base.rglob("*")):
            if path.name.startswith(".rbexport-"):
                continue
            try:
                info = path.lstat()
            except OSError:
                continue  # gone meanwhile
            if stat.S_ISLNK(info.st_mode) and _within(os.path.realpath(path), root):
                with contextlib.suppress(OSError):  # else a broken link or a loop: listed as itself
                    info = os.stat(path)
            if not stat.S_ISDIR(info.st_mode):
                yield ObjectInfo(
                    path.relative_to(self.root).as_posix(),
                    info.st_size,
                    f"{info.st_mtime_ns}-{info.st_size}",
                    info.st_mtime,
                )

    def stat(self, key: str) -> ObjectInfo | None:
        """None when there is no file; RefusedObjectError for what `read` would refuse."""
        real = self._inside(key)
        try:
            info = os.stat(real)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError:
            raise AccessDeniedError(f"permission denied reading {shown(self._path(key))}") from None
        except OSError as error:  # a loop of symbolic links, a name too long
            raise RefusedObjectError(shown(self._path(key)), f"cannot be read ({error.strerror})") from None
        if stat.S_ISDIR(info.st_mode):
            return None
        _regular_or_refuse(info.st_mode, self._path(key))
        return ObjectInfo(key, info.st_size, f"{info.st_mtime_ns}-{info.st_size}", info.st_mtime)

    def delete(self, key: str) -> None:
        """Delete the file (never through a symbolic link), then the folders it leaves
        empty, as they would be on S3."""
        parts = self._parts(key)
        try:
            folders = self._folders(parts[:-1], create=False)
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            try:
                os.unlink(parts[-1], dir_fd=folders[-1])
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                pass
            except PermissionError:
                raise AccessDeniedError(f"permission denied deleting {shown(self._path(key))}") from None
            for depth in range(len(parts) - 2, -1, -1):
                try:
                    os.rmdir(parts[depth], dir_fd=folders[depth])
                except OSError:
                    break
        finally:
            for handle in folders:
                os.close(handle)

    def check_reachable(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise ConfigurationError(f"{self.root} is a file, not a folder")

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.read(key)
        except ObjectNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def write_if(self, key: str, data: bytes, tag: str | None) -> str:
        with self._exclusive():
            self._expect(key, tag)
            self.write(key, data)
        return hashlib.sha256(data).hexdigest()

    def delete_if(self, key: str, tag: str) -> None:
        with self._exclusive():
            self._expect(key, tag)
            self.delete(key)
            if self._made_root:  # a run that failed before writing leaves no folder behind
                with contextlib.suppress(OSError):
                    self.root.rmdir()  # only when empty

    def _expect(self, key: str, tag: str | None) -> None:
        current = self.read_tagged(key)
        if (current[1] if current else None) != tag:
            raise PreconditionFailed(self.url_of(key))

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Every compare-and-swap on this root, one at a time across processes: an flock on
        the root folder itself (no file of ours beside the export). A release that removed
        the (empty) root meanwhile makes the next one lock the folder made anew."""
        import fcntl

        while True:
            try:
                if not self.root.exists():
                    self.root.mkdir(parents=True, exist_ok=True)
                    self._made_root = True
                handle = os.open(self.root, os.O_RDONLY)
            except FileNotFoundError:
                continue  # removed between the two steps: make it again
            except OSError as error:
                raise ConfigurationError(f"cannot use {self.root}: {error.strerror or error}") from None
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                still_there = os.stat(self.root).st_ino == os.fstat(handle).st_ino
            except FileNotFoundError:
                still_there = False
            if still_there:
                break
            os.close(handle)  # locked a folder that was removed meanwhile: lock the one there now
        try:
            yield
        finally:
            os.close(handle)


_KINDS = {
    stat.S_IFIFO: "a named pipe",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _regular_or_refuse(mode: int, path: Path) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(str(path))
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a file")
        raise RefusedObjectError(shown(path), f"{kind}, not a regular file (rbexport reads regular files only)")


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


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
        return _shared_client(self.access)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def read(self, key: str) -> bytes:
        with _s3_errors(self.url_of(key)):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def write(self, key: str, data: bytes, sha256: str | None = None) -> None:
        from boto3.s3.transfer import TransferConfig

        with _s3_errors(self.url_of(key)):
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
        with _s3_errors(self.url_of(key)):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]

    def write_stream(self, key: str, stream: BinaryIO | io.RawIOBase) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, max_concurrency=4)
        with _s3_errors(self.url_of(key)):
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
        with _s3_errors(self.url_of(key)):
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
        with _s3_errors(join_url(self.url, prefix)):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        item["Key"][strip:], item["Size"], item["ETag"].strip('"'), item["LastModified"].timestamp()
                    )

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            with _s3_errors(self.url_of(key)):
                head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ObjectNotFoundError:
            return None
        return ObjectInfo(key, head["ContentLength"], head["ETag"].strip('"'), head["LastModified"].timestamp())

    def delete(self, key: str) -> None:
        if normalize_key(key) is None:  # `..` parts: a store that resolves them would reach past the prefix
            raise RefusedObjectError(shown(self.url_of(key)), f"the key leaves {self.url}")
        with _s3_errors(self.url_of(key)):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        try:
            with _s3_errors(self.url_of(key)):
                answer = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
                return answer["Body"].read(), answer["ETag"]
        except ObjectNotFoundError:
            return None

    def write_if(self, key: str, data: bytes, tag: str | None) -> str:
        """A conditional PutObject (If-None-Match / If-Match: AWS S3 since 2024, SeaweedFS)."""
        condition = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag}
        with _s3_errors(self.url_of(key)):
            return self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)["ETag"]

    def delete_if(self, key: str, tag: str) -> None:
        with _s3_errors(self.url_of(key)):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key), IfMatch=tag)

    def object_lock_enabled(self) -> bool:
        """Whether the bucket has S3 Object Lock (it can only be switched on when the bucket is made)."""
        try:
            with _s3_errors(f"s3://{self.bucket}"):
                answer = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except (ConfigurationError, ObjectNotFoundError, TransientStorageError) as error:
            if "ObjectLockConfigurationNotFound" in str(error) or "object lock" in str(error).lower():
                return False
            raise
        return answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

    def retain(self, key: str, until: datetime) -> None:
        """Object Lock retention in compliance mode: no one can delete or overwrite this version
        of the object before `until` (an Object Lock bucket only)."""
        with _s3_errors(self.url_of(key)):
            self.client.put_object_retention(
                Bucket=self.bucket, Key=self._key(key), Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until}
            )

    def create_bucket(self, object_lock: bool = False) -> None:
        """Create the bucket if it does not exist (demo and tests); `object_lock`: with S3 Object Lock."""
        with _s3_errors(f"s3://{self.bucket}"):
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
            with _s3_errors(f"s3://{self.bucket}"):
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


class _HashingReader(io.RawIOBase):
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


_session_lock = threading.Lock()
_session = None


_clients: dict[tuple[int, S3Access], object] = {}
_clients_lock = threading.Lock()


def _shared_client(access: S3Access):
    """One client per access and process (a forked process makes its own)."""
    key = (os.getpid(), access)
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key) or _clients.setdefault(key, _new_s3_client(access))
    return client


def _new_s3_client(access: S3Access):
    """A new client. Sessions are not thread-safe, so clients are made under a lock from
    one shared session, which also loads boto3's service models only once."""
    global _session
    import boto3
    from botocore.config import Config

    config = Config(
        # Explicit, so neither botocore's defaults nor AWS_REQUEST_CHECKSUM_CALCULATION /
        # AWS_RESPONSE_CHECKSUM_VALIDATION can turn off the checksums on uploads and reads.
        request_checksum_calculation="when_supported",
        response_checksum_validation="when_supported",
        retries={"mode": "standard", "max_attempts": 4},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=48,  # shared by every thread of the process
    )
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        session = _session if access.profile_name is None else boto3.session.Session(profile_name=access.profile_name)
        keys = access.credentials
        explicit = (
            {}
            if keys is None
            else {
                "aws_access_key_id": keys.access_key_id,
                "aws_secret_access_key": keys.secret_access_key.get_secret_value(),
                "aws_session_token": keys.session_token.get_secret_value() if keys.session_token else None,
            }
        )
        return session.client(
            "s3",
            endpoint_url=access.endpoint_url,
            region_name=access.region_name,
            verify=access.verify,
            config=config,
            **cast(Any, explicit),
        )


_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}
_DENIED = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
    "AccountProblem",
}

# The store received bytes that do not match the checksum sent with them (corrupted on the way).
_CORRUPTED = ("BadDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch")


def _corrupted_message(url: str, code: str) -> str:
    return f"{url}: the store refused the upload: the bytes it received do not match their checksum ({code})"


class _s3_errors:
    """Turn boto3's exceptions into ours, keeping only what a person needs (no credentials)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> None:
        if error is None:
            return None
        from botocore import exceptions as boto

        ours = _client_error(self.url, error) if isinstance(error, boto.ClientError) else _other_error(self.url, error)
        if ours is not None:
            raise ours from None
        return None


def _client_error(url: str, error) -> Exception:
    """What the store's answer means: not found, a failed condition, denied, busy, or refused."""
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code in _NOT_FOUND:
        return ObjectNotFoundError(url)
    if status == 412 or code in {"PreconditionFailed", "ConditionalRequestConflict"}:
        return PreconditionFailed(url)
    if code in _CORRUPTED:
        return TransientStorageError(_corrupted_message(url, code))
    if code in _DENIED:
        return AccessDeniedError(f"access denied to {url} ({code}): check the credentials and their permissions")
    if status >= 500 or code in {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}:
        return TransientStorageError(f"{url}: the store answered {code or status}")
    return ConfigurationError(f"{url}: the store refused the request ({code or status})")


def _other_error(url: str, error: BaseException) -> Exception | None:
    """boto3's errors that are not an answer (credentials, connections, checksums), or None."""
    from boto3.exceptions import S3UploadFailedError
    from botocore import exceptions as boto

    if isinstance(error, boto.ProfileNotFound):
        profile = error.kwargs.get("profile")
        return ConfigurationError(
            f"no AWS profile {profile!r} in this machine's AWS config files (~/.aws/config, ~/.aws/credentials)"
        )
    if isinstance(error, boto.NoCredentialsError | boto.PartialCredentialsError):
        return ConfigurationError(
            "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        )
    if isinstance(error, boto.EndpointConnectionError | boto.ConnectionError | boto.HTTPClientError):
        return TransientStorageError(f"{url}: cannot connect to the store ({type(error).__name__})")
    if isinstance(error, boto.FlexibleChecksumError):  # a read whose bytes do not match the store's checksum
        return TransientStorageError(f"{url}: the bytes read do not match the checksum the store holds for them")
    if isinstance(error, boto.ResponseStreamingError | boto.IncompleteReadError):
        return TransientStorageError(f"{url}: the connection broke during the transfer")
    if isinstance(error, S3UploadFailedError):  # a multipart upload wraps the ClientError in text
        corrupted = next((code for code in _CORRUPTED if code in str(error)), None)
        if corrupted:
            return TransientStorageError(_corrupted_message(url, corrupted))
        if any(code in str(error) for code in _DENIED):
            return AccessDeniedError(f"access denied to {url}: check the credentials and their permissions")
        return TransientStorageError(f"{url}: the multipart upload failed")
    if isinstance(error, ValueError) and "endpoint" in str(error).lower():
        return ConfigurationError(f"invalid S3 endpoint URL: {error}")
    return None
