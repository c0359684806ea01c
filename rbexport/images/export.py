"""The images of a task in its export (SPEC 5): copied as they are, or one NIfTI per series.

A task's images are the `items` of its top-level series (a consensus task's annotators
label the same images). `TaskImages` serves one task for every variant of a run:

- `check()` finds every item (a missing one fails the task before anything is written)
  and says how much memory converting the largest series holds;
- `plan(...)` decides, for one variant, the files to write and the `items` each series
  gets in tasks.json; a series converted to NIfTI is read, converted and put on its
  label map's grid once, whatever the number of variants;
- `write(...)` stores them: copies go store to store where the store can (S3 to S3 on one
  endpoint), else stream through here, never a whole series in memory;
- `dicom_headers(...)` gives a series' DICOM headers for a DICOM SEG, read only up to the
  pixel data, and `read_dicom_headers_ahead(...)` starts reading them while the task
  decodes its masks.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import BinaryIO

from ..display import shown
from ..errors import AccessDeniedError, ObjectNotFoundError, RefusedObjectError, TaskDataError, TransientStorageError
from ..export_tree import IMAGES_FOLDER
from ..naming import image_file_names, series_names
from ..nifti import LabelMap
from ..report import FileRecord
from ..storage import Storage
from .dicom import SeriesHeaders, parse_dicom_header, series_headers
from .geometry import onto_label_grid
from .messages import one_line
from .read import KIND_NAMES, SNIFF_BYTES, item_kind, read_image_series
from .volume import ImageVolume, encode_nifti

Locate = Callable[[str], tuple[Storage, str]]


@dataclass(frozen=True)
class SeriesImages:
    """The image items of one top-level series and the folder name they go under."""

    position: int
    name: str  # <Series>: the same name as the series' masks
    references: tuple[str, ...]


@dataclass(frozen=True)
class ImageCopy:
    source: Storage
    key: str
    path: str  # in the export
    size: int


@dataclass
class ImagePlan:
    """One variant's images: what to write, and the `items` of each series in tasks.json."""

    copies: list[ImageCopy] = field(default_factory=list)
    encoded: list[tuple[str, bytes]] = field(default_factory=list)
    items: dict[int, str | list[str]] = field(default_factory=dict)


def series_images(task: dict) -> list[SeriesImages]:
    """Every top-level series that names image items, with its series name."""
    top_series = [series for series in task.get("series") or [] if isinstance(series, dict)]
    names = series_names([series.get("name") for series in top_series])
    found = []
    for position, (series, name) in enumerate(zip(top_series, names, strict=True)):
        references = _references(series.get("items"), name)
        if references:
            found.append(SeriesImages(position, name, references))
    return found


def image_references(task: dict) -> list[str]:
    """Every image item a task names (for fingerprints); [] when its items are malformed."""
    try:
        return [reference for series in series_images(task) for reference in series.references]
    except TaskDataError:
        return []


def _references(items: object, series: str) -> tuple[str, ...]:
    if items is None:
        return ()
    if isinstance(items, str):
        return (items,)
    if isinstance(items, list) and all(isinstance(item, str) for item in items):
        return tuple(items)
    raise TaskDataError(f"series {series}: items must be a path or a list of paths")


class TaskImages:
    """The images of one task, for every variant that asks for them."""

    def __init__(
        self, task: dict, folder: str, locate: Locate, pool: Executor, known_sizes: Mapping[str, int] | None = None
    ) -> None:
        self.series = series_images(task)
        self.folder = folder
        self.locate = locate
        self.pool = pool
        self._sizes: dict[str, int] = dict(known_sizes or {})
        self._converted: dict[tuple[int, bool], bytes] = {}
        self._volumes: dict[tuple[int, int | None], ImageVolume] = {}
        self._headers: dict[int, SeriesHeaders] = {}
        self._reading: dict[int, Future[SeriesHeaders]] = {}  # headers read ahead, by series position

    def check(self, convert: bool) -> int:
        """Find every item (those the source's listing did not show are looked up); the
        memory converting the largest series holds (0 without `convert`)."""
        references = [reference for series in self.series for reference in series.references]
        unknown = [reference for reference in references if reference not in self._sizes]  # not in the listing
        self._sizes.update(zip(unknown, self.pool.map(self._size_of, unknown), strict=True))
        if not convert or not self.series:
            return 0
        # The items' bytes, and the decoded volume (about as large), at the same time.
        return max(2 * sum(self._sizes[reference] for reference in series.references) for series in self.series)

    def _size_of(self, reference: str) -> int:
        storage, key = self._locate(reference)
        try:
            info = storage.stat(key)
        except RefusedObjectError as error:  # a pipe, a device, a link out of the source
            raise TaskDataError(f"image item: {error.reason}", reference) from None
        except AccessDeniedError:
            raise TaskDataError("permission denied reading the image item", reference) from None
        if info is None:
            raise TaskDataError("image item not found", reference)
        return info.size

    def _locate(self, reference: str) -> tuple[Storage, str]:
        try:
            return self.locate(reference)
        except TaskDataError as error:
            raise TaskDataError(f"image item {error.reason}", error.file or reference) from None

    def plan(self, image_format: str, compress: bool, labels: Mapping[int, LabelMap]) -> ImagePlan:
        """The files and `items` of one variant; TaskDataError (nothing written) when a series cannot be exported."""
        plan = ImagePlan()
        for series in self.series:
            if image_format == "nifti":
                path = f"{IMAGES_FOLDER}/{self.folder}/{series.name}{'.nii.gz' if compress else '.nii'}"
                plan.encoded.append((path, self._nifti(series, compress, labels.get(series.position))))
                plan.items[series.position] = path
                continue
            names = image_file_names(series.references)
            paths = [f"{IMAGES_FOLDER}/{self.folder}/{series.name}/{name}" for name in names]
            for reference, path in zip(series.references, paths, strict=True):
                storage, key = self._locate(reference)
                plan.copies.append(ImageCopy(storage, key, path, self._sizes[reference]))
            plan.items[series.position] = paths
        return plan

    def _nifti(self, series: SeriesImages, compress: bool, label: LabelMap | None) -> bytes:
        key = (series.position, compress)
        if key not in self._converted:
            self._converted[key] = encode_nifti(self.volume(series.position, series.name, label), compress)
            self._volumes.clear()  # the encoded file is what the other variants reuse
        return self._converted[key]

    def volume(self, position: int, name: str, label: LabelMap | None) -> ImageVolume:
        """The image of the series at `position` (called `name`), read once, on `label`'s
        grid when given; TaskDataError when it has no items or cannot lie on that grid."""
        key = (position, None if label is None else id(label))  # one grid or another
        if key not in self._volumes:
            series = next((item for item in self.series if item.position == position), None)
            if series is None:
                raise TaskDataError(f"series {name} has no image (no items)")
            items = list(zip(series.references, self.pool.map(self._read, series.references), strict=True))
            volume = read_image_series(items)
            del items
            if label is not None:
                header = label.header
                volume = onto_label_grid(volume, header.get_data_shape(), header.get_best_affine(), series.name)
            self._volumes[key] = volume
        return self._volumes[key]

    def read_dicom_headers_ahead(self, needed_by: str, pool: Executor) -> None:
        """Start reading every series' DICOM headers on `pool` (threads of their own, which
        wait on the I/O threads), while the task decodes its masks; `dicom_headers` takes
        what they read, or raises what reading them raised."""
        for series in self.series:
            if series.position not in self._headers and series.position not in self._reading:
                self._reading[series.position] = pool.submit(self._read_headers, series, needed_by)

    def dicom_headers(self, position: int, name: str, needed_by: str) -> SeriesHeaders:
        """The DICOM headers and grid of the series at `position` (called `name`), read once;
        TaskDataError when it has no items or they are not DICOM (`needed_by` says what needs them).

        Each item is read only up to its pixel data (streamed: a CT series' hundreds of
        megabytes of pixels are never downloaded for its headers)."""
        if position not in self._headers:
            reading = self._reading.pop(position, None)
            if reading is not None:
                self._headers[position] = reading.result()
            else:
                series = next((item for item in self.series if item.position == position), None)
                if series is None:
                    raise TaskDataError(f"series {name} has no image items: {needed_by} references its DICOM images")
                self._headers[position] = self._read_headers(series, needed_by)
        return self._headers[position]

    def _read_headers(self, series: SeriesImages, needed_by: str) -> SeriesHeaders:
        # Fetching the heads waits on the store, several at once on the I/O threads; parsing
        # them is Python under the GIL, faster in one thread than spread over those.
        futures = [self.pool.submit(self._dicom_head, item, series.name, needed_by) for item in series.references]
        try:
            heads = [future.result() for future in futures]
            return series_headers([(reference, parse_dicom_header(reference, head)) for reference, head in heads])
        finally:
            for future in futures:
                if not future.cancel() and future.exception() is None:
                    future.result()[1].close()

    def _dicom_head(self, reference: str, name: str, needed_by: str) -> tuple[str, _StreamHead]:
        """The item's stream with its first chunk read, checked to be DICOM (close it when done)."""
        storage, key = self._locate(reference)
        try:
            stream = storage.open(key)
        except ObjectNotFoundError:
            raise TaskDataError("image item not found", reference) from None
        except RefusedObjectError as error:
            raise TaskDataError(f"image item: {error.reason}", reference) from None
        except AccessDeniedError:
            raise TaskDataError("permission denied reading the image item", reference) from None
        head = _StreamHead(stream, storage.url_of(key))
        try:
            kind = item_kind(reference, head.read(SNIFF_BYTES))
            if kind != "dicom":
                raise TaskDataError(
                    f"series {name}: its images are {KIND_NAMES[kind]}, not DICOM; {needed_by} references "
                    "DICOM images (export this series with another mask_format)",
                    reference,
                )
            head.seek(0)
        except BaseException:
            head.close()
            raise
        return reference, head

    def _read(self, reference: str) -> bytes:
        storage, key = self._locate(reference)
        try:
            return storage.read(key)
        except ObjectNotFoundError:
            raise TaskDataError("image item not found", reference) from None
        except RefusedObjectError as error:
            raise TaskDataError(f"image item: {error.reason}", reference) from None
        except AccessDeniedError:
            raise TaskDataError("permission denied reading the image item", reference) from None

    def write(self, destination: Storage, plan: ImagePlan) -> list[FileRecord]:
        """Store the variant's images, several at once; a FileRecord for each."""
        futures = [self.pool.submit(_store, destination, path, data) for path, data in plan.encoded]
        futures += [self.pool.submit(_copy, destination, copy) for copy in plan.copies]
        return [future.result() for future in futures]

    def release(self) -> None:
        self._converted.clear()
        self._volumes.clear()
        self._headers.clear()
        for reading in self._reading.values():
            reading.cancel()  # one already reading closes its streams when it ends
        self._reading.clear()


class _StreamHead(io.RawIOBase):
    """A stream read from the start as a seekable file: what was read is kept, nothing more is
    fetched than a reader asks for (pydicom stops at the pixel data)."""

    CHUNK = 16 * 1024  # a header is a few kB; pixel data starts after it

    def __init__(self, stream: BinaryIO, url: str) -> None:
        self.stream = stream
        self.url = url
        self.data = bytearray()
        self.position = 0
        self.ended = False

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.stream.close()
        super().close()

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            self._fill(None)
            offset += len(self.data)
        elif whence == io.SEEK_CUR:
            offset += self.position
        self.position = max(0, offset)
        return self.position

    def readinto(self, buffer) -> int:
        self._fill(self.position + len(buffer))
        piece = self.data[self.position : self.position + len(buffer)]
        buffer[: len(piece)] = piece
        self.position += len(piece)
        return len(piece)

    def _fill(self, upto: int | None) -> None:
        while not self.ended and (upto is None or len(self.data) < upto):
            try:
                chunk = self.stream.read(self.CHUNK)
            except Exception as error:  # the store's stream broke off (a reset, a timeout): try again later
                raise TransientStorageError(f"reading {self.url} broke off ({one_line(error)})") from None
            if not chunk:
                self.ended = True
            self.data += chunk


def _store(destination: Storage, path: str, data: bytes) -> FileRecord:
    record = FileRecord.of(path, data)
    destination.write(path, data, record.sha256)
    return record


def _copy(destination: Storage, copy: ImageCopy) -> FileRecord:
    try:
        copied = destination.copy_from(copy.source, copy.key, copy.path, size=copy.size)
    except ObjectNotFoundError:
        raise TaskDataError("image item not found", copy.source.url_of(copy.key)) from None
    except RefusedObjectError as error:  # the item (a pipe, a link out of the source), or the destination's folder
        if error.path != shown(copy.source.url_of(copy.key)):
            raise
        raise TaskDataError(f"image item: {error.reason}", copy.source.url_of(copy.key)) from None
    return FileRecord(copy.path, copied.bytes, copied.sha256, copied.etag)


def with_image_items(entry: dict, items: Mapping[int, str | list[str]]) -> dict:
    """The tasks.json entry with each exported series' `items` pointing into the export.

    Every series list of the entry (its own, each annotator's, the super truth's) that
    carries `items` at an exported position gets the new value.
    """
    if not items:
        return entry

    def rewrite(series_list: object) -> object:
        if not isinstance(series_list, list):
            return series_list
        return [
            {**series, "items": items[position]}
            if isinstance(series, dict) and "items" in series and position in items
            else series
            for position, series in enumerate(series_list)
        ]

    entry = {**entry, "series": rewrite(entry.get("series"))}
    if isinstance(entry.get("consensusTasks"), list):
        entry["consensusTasks"] = [
            {**annotator, "series": rewrite(annotator.get("series"))} if isinstance(annotator, dict) else annotator
            for annotator in entry["consensusTasks"]
        ]
    if isinstance(entry.get("superTruth"), dict):
        entry["superTruth"] = {**entry["superTruth"], "series": rewrite(entry["superTruth"].get("series"))}
    return entry
