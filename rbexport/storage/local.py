"""`LocalStorage`: a folder, read and written without ever leaving it."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..display import shown
from ..errors import AccessDeniedError, ConfigurationError, ObjectNotFoundError, PreconditionFailed, RefusedObjectError
from .base import STREAM_CHUNK, ObjectInfo, Storage
from .location import join_url, normalize_key


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
