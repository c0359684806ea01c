"""DICOM elements, items and sequences encoded straight to bytes, and a file assembled from them.

Explicit VR Little Endian, as a SEG's per-frame functional groups and pixel data are
written (rbexport.mask_formats.seg_writer): values padded to even length (UIDs with a
NUL, others with a space), long-length VRs with a 4-byte length. `file_with_raw_elements`
lets pydicom write a dataset's small elements and puts the bytes made here in at their
places in tag order.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

from pydicom.dataset import Dataset

LONG_LENGTH_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"}
ITEM = b"\xfe\xff\x00\xe0"
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
UNDEFINED_LENGTH = b"\xff\xff\xff\xff"


def code_bytes(value: str, scheme: str, meaning: str) -> bytes:
    return (
        element_bytes(0x0008, 0x0100, b"SH", value.encode("ascii"))
        + element_bytes(0x0008, 0x0102, b"SH", scheme.encode("ascii"))
        + element_bytes(0x0008, 0x0104, b"LO", meaning.encode("ascii"))
    )


def element_bytes(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    head = struct.pack("<HH", group, element) + vr
    if vr in LONG_LENGTH_VRS:
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def item_bytes(content: bytes) -> bytes:
    return ITEM + struct.pack("<I", len(content)) + content


def sequence_bytes(group: int, element: int, *items: bytes) -> bytes:
    return element_bytes(group, element, b"SQ", b"".join(item_bytes(item) for item in items))


def file_with_raw_elements(dataset: Dataset, raw: Mapping[int, Sequence[bytes | memoryview]]) -> bytes:
    """The file (preamble, file meta, dataset): pydicom writes `dataset`'s elements, and each
    tag of `raw` goes in as its pieces of bytes at its place in tag order (copied once, into
    the file)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    pieces: list[bytes | memoryview] = []
    stream = DicomBytesIO()
    stream.is_little_endian, stream.is_implicit_VR = True, False
    stream.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(stream, dataset.file_meta, enforce_standard=True)
    encoding = dataset._character_set
    chunk = Dataset()
    for tag in sorted({*dataset.keys(), *raw}):
        if tag in raw:
            write_dataset(stream, chunk, encoding)
            pieces += [stream.getvalue(), *raw[tag]]
            stream = DicomBytesIO()
            stream.is_little_endian, stream.is_implicit_VR = True, False
            chunk = Dataset()
        else:
            chunk.add(dataset[tag])
    write_dataset(stream, chunk, encoding)
    pieces.append(stream.getvalue())
    return b"".join(pieces)
