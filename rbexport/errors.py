"""What can go wrong, sorted by who has to act on it.

- `ConfigurationError`: the run cannot start or go on (bad URL, unreachable endpoint,
  denied access, a tasks.json that is not a JSON list). The CLI exits 2.
- `TaskDataError`: one task's data is bad (missing or corrupt mask, unknown category).
  That task fails at once, the others go on. The CLI exits 1.
- `TransientStorageError`: the store did not answer this time (5xx, throttling, reset,
  timeout). The per-task step is retried with back-off.
- `PreconditionFailed`: a conditional write lost a race (rbexport.lease handles it).
- `RefusedObjectError`: a local file that is not a regular file inside its folder (a
  pipe, a device, a symbolic link out of it): exit 2, or its task's failure for a mask or
  an image.

Every message is one line a person can act on. None of them ever holds a credential.
All take their fields as positional arguments, so they survive pickling to workers.
"""

from __future__ import annotations


class RbexportError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigurationError(RbexportError):
    """The run as a whole cannot proceed; nothing more is written."""


class StorageError(RbexportError):
    """A storage operation failed."""


class TransientStorageError(StorageError):
    """The store did not answer this time; trying again may work."""


class AccessDeniedError(StorageError, ConfigurationError):
    """The credentials in use may not do this: a configuration problem, never retried."""


class RefusedObjectError(StorageError, ConfigurationError):
    """An object a local folder will not read or write: a named pipe, a device or a socket
    (not a regular file), a symbolic link that leads out of the folder, or a folder on the
    way to a write that is a symbolic link. A configuration problem where the run's own
    files are concerned; a task's mask or image that is one fails that task.

    `path`: the file or folder (as shown); `reason`: what it is, one line."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class ObjectNotFoundError(StorageError):
    """The object does not exist."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url

    def __str__(self) -> str:
        return f"not found: {self.url}"


class PreconditionFailed(StorageError):
    """A conditional write or delete found the object not as expected (someone else changed it)."""


class TaskDataError(RbexportError):
    """One task cannot be exported because of its own data.

    `file` is the source file at fault (a path relative to the source, or a URL), when
    there is one.
    """

    def __init__(self, reason: str, file: str | None = None) -> None:
        super().__init__(reason, file)
        self.reason = reason
        self.file = file

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}" if self.file else self.reason


class ExportIncomplete(RbexportError):
    """Some tasks failed; the others were exported and published. Carries the run report."""

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message, report)
        self.message = message
        self.report = report

    def __str__(self) -> str:
        return self.message


class ExportDamaged(RbexportError):
    """Files of an export are missing or changed (rbexport verify). Carries the VerifyResult."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message, result)
        self.message = message
        self.result = result

    def __str__(self) -> str:
        return self.message
