"""The storage contract: one suite of behaviours, run against every backend.

In the style of fsspec's abstract tests (`fsspec/tests/abstract/`): `StorageContract`
holds every test, written against the `Storage` interface alone; each backend is one small
subclass that supplies its fixtures (`storage`, an empty root of that backend, and
`other`, a second one of the same backend), so a behaviour is asserted identically for a
local folder and for a bucket prefix on the suite's real SeaweedFS. The compare-and-swap
tests are what the one-writer lease (rbexport/lease.py) stands on.
"""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from rbexport.errors import ObjectNotFoundError, PreconditionFailed, RefusedObjectError
from rbexport.storage import STREAM_CHUNK, LocalStorage, S3Storage, Storage

# More than one chunk of a stream, so reading and writing in chunks is exercised.
LARGE = 2 * STREAM_CHUNK + 12345


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StorageContract:
    """What every `Storage` does; subclasses supply `storage` and `other` (fixtures)."""

    # read and write

    def test_what_is_written_is_read_back(self, storage: Storage):
        storage.write("a.txt", b"first")
        assert storage.read("a.txt") == b"first"

    def test_a_write_replaces_the_object(self, storage: Storage):
        storage.write("a.txt", b"first, and longer")
        storage.write("a.txt", b"second")
        assert storage.read("a.txt") == b"second"

    def test_keys_with_folders_and_empty_objects(self, storage: Storage):
        storage.write("series/1/mask.nii.gz", b"")
        storage.write("series/1/deeper/image.dcm", b"\x00\x01")
        assert storage.read("series/1/mask.nii.gz") == b""
        assert storage.read("series/1/deeper/image.dcm") == b"\x00\x01"

    def test_a_write_with_its_sha256_stores_the_same_bytes(self, storage: Storage):
        data = os.urandom(1000)
        storage.write("given.bin", data, sha256=sha256(data))
        assert storage.read("given.bin") == data

    def test_reading_a_missing_object_is_not_found(self, storage: Storage):
        with pytest.raises(ObjectNotFoundError) as missing:
            storage.read("missing.bin")
        assert str(missing.value) == f"not found: {storage.url_of('missing.bin')}"

    # streams

    def test_open_streams_the_object_in_chunks(self, storage: Storage):
        data = os.urandom(LARGE)
        storage.write("large.bin", data)
        with storage.open("large.bin") as stream:
            chunks = list(iter(lambda: stream.read(STREAM_CHUNK), b""))
        assert len(chunks) >= 3 and all(len(chunk) <= STREAM_CHUNK for chunk in chunks)
        assert b"".join(chunks) == data

    def test_opening_a_missing_object_is_not_found(self, storage: Storage):
        with pytest.raises(ObjectNotFoundError):
            storage.open("missing.bin")

    def test_write_stream_stores_what_the_stream_yields(self, storage: Storage):
        data = os.urandom(LARGE)
        storage.write_stream("streamed/large.bin", io.BytesIO(data))
        assert storage.read("streamed/large.bin") == data
        storage.write_stream("streamed/large.bin", io.BytesIO(b"short"))  # replaces it
        assert storage.read("streamed/large.bin") == b"short"

    # list, stat, exists

    def test_an_empty_root_lists_nothing(self, storage: Storage):
        assert list(storage.list()) == []
        assert list(storage.list("nothing/")) == []

    def test_list_gives_every_object_with_keys_relative_to_the_root(self, storage: Storage):
        objects = {"tasks.json": b"[]", "a/b.nii": b"12345", "a-c/d.png": b"xy", "a/e/f.dcm": b""}
        for key, data in objects.items():
            storage.write(key, data)
        listed = {info.key: info.size for info in storage.list()}
        assert listed == {key: len(data) for key, data in objects.items()}

    def test_list_under_a_folder(self, storage: Storage):
        for key in ("a/b.nii", "a/e/f.dcm", "a-c/d.png", "ab.txt"):
            storage.write(key, b"x")
        assert sorted(info.key for info in storage.list("a/")) == ["a/b.nii", "a/e/f.dcm"]

    def test_stat_gives_the_size_and_a_version(self, storage: Storage):
        storage.write("a/b.nii", b"12345")
        info = storage.stat("a/b.nii")
        assert info is not None
        assert (info.key, info.size) == ("a/b.nii", 5)
        assert info.etag and info.modified > 0
        [listed] = storage.list()
        assert (listed.key, listed.size, listed.etag) == (info.key, info.size, info.etag)

    def test_stat_of_a_missing_object_is_none(self, storage: Storage):
        storage.write("a/b.nii", b"1")
        assert storage.stat("missing.bin") is None
        assert storage.stat("a/missing.nii") is None
        assert storage.stat("a") is None  # a folder is not an object

    def test_exists(self, storage: Storage):
        storage.write("a/b.nii", b"1")
        assert storage.exists("a/b.nii")
        assert not storage.exists("a/c.nii")
        assert not storage.exists("a")

    # delete

    def test_delete_removes_the_object_and_nothing_else(self, storage: Storage):
        storage.write("a/b.nii", b"1")
        storage.write("a/c.nii", b"2")
        storage.delete("a/b.nii")
        assert not storage.exists("a/b.nii")
        assert [info.key for info in storage.list()] == ["a/c.nii"]
        storage.delete("a/c.nii")
        assert list(storage.list()) == []  # no empty folder is left to list

    def test_deleting_a_missing_object_is_no_error(self, storage: Storage):
        storage.delete("missing.bin")
        storage.delete("no/such/folder/missing.bin")

    def test_a_key_that_leaves_the_root_is_refused(self, storage: Storage):
        with pytest.raises(RefusedObjectError):
            storage.delete("../outside.bin")

    # copy and digest

    def test_digest_is_the_size_and_sha256(self, storage: Storage):
        data = os.urandom(LARGE)
        storage.write("large.bin", data)
        assert storage.digest("large.bin") == (len(data), sha256(data))
        storage.write("empty.bin", b"")
        assert storage.digest("empty.bin") == (0, sha256(b""))

    def test_digest_of_a_missing_object_is_not_found(self, storage: Storage):
        with pytest.raises(ObjectNotFoundError):
            storage.digest("missing.bin")

    def test_copy_from_another_backend_streams_and_hashes(self, storage: Storage, tmp_path):
        source = LocalStorage(tmp_path / "copy-source")
        data = os.urandom(LARGE)
        source.write("scan.nii", data)
        copied = storage.copy_from(source, "scan.nii", "copied/scan.nii")
        assert (copied.bytes, copied.sha256) == (len(data), sha256(data))
        assert storage.read("copied/scan.nii") == data

    def test_copy_within_the_backend(self, storage: Storage, other: Storage):
        data = os.urandom(5000)
        other.write("scan.nii", data)
        copied = storage.copy_from(other, "scan.nii", "copied/scan.nii", size=len(data))
        assert storage.read("copied/scan.nii") == data
        assert copied.bytes == len(data)
        # The bytes' SHA-256 when they passed through here (or the store gave it); else the copy's version.
        assert copied.sha256 == sha256(data) or (copied.sha256 is None and copied.etag)

    def test_copying_a_missing_object_is_not_found(self, storage: Storage, other: Storage):
        with pytest.raises(ObjectNotFoundError):
            storage.copy_from(other, "missing.bin", "copied.bin")
        assert not storage.exists("copied.bin")

    # compare-and-swap (rbexport.lease)

    def test_read_tagged_of_a_missing_object_is_none(self, storage: Storage):
        assert storage.read_tagged("lease.json") is None

    def test_write_if_none_creates_the_object_and_gives_its_tag(self, storage: Storage):
        tag = storage.write_if("lease.json", b"mine", None)
        assert storage.read_tagged("lease.json") == (b"mine", tag)
        assert storage.read("lease.json") == b"mine"

    def test_write_if_none_refuses_an_object_that_exists(self, storage: Storage):
        storage.write_if("lease.json", b"theirs", None)
        with pytest.raises(PreconditionFailed):
            storage.write_if("lease.json", b"mine", None)
        assert storage.read("lease.json") == b"theirs"

    def test_write_if_with_the_current_tag_replaces_the_object(self, storage: Storage):
        first = storage.write_if("lease.json", b"renewal 1", None)
        second = storage.write_if("lease.json", b"renewal 2", first)
        assert second != first
        assert storage.read_tagged("lease.json") == (b"renewal 2", second)

    def test_write_if_with_a_stale_tag_fails_and_writes_nothing(self, storage: Storage):
        stale = storage.write_if("lease.json", b"mine", None)
        current = storage.write_if("lease.json", b"theirs", stale)  # another writer took it
        with pytest.raises(PreconditionFailed) as failed:
            storage.write_if("lease.json", b"mine again", stale)
        assert storage.url_of("lease.json") in str(failed.value)
        assert storage.read_tagged("lease.json") == (b"theirs", current)

    def test_the_tag_of_read_tagged_is_the_one_write_if_expects(self, storage: Storage):
        storage.write("lease.json", b"written plainly")
        [data, tag] = storage.read_tagged("lease.json")
        assert data == b"written plainly"
        storage.write_if("lease.json", b"swapped", tag)
        assert storage.read("lease.json") == b"swapped"

    def test_delete_if_with_the_current_tag_deletes(self, storage: Storage):
        tag = storage.write_if("lease.json", b"mine", None)
        storage.delete_if("lease.json", tag)
        assert storage.read_tagged("lease.json") is None
        assert storage.write_if("lease.json", b"next", None)  # free for the next writer

    def test_delete_if_with_a_stale_tag_fails_and_deletes_nothing(self, storage: Storage):
        stale = storage.write_if("lease.json", b"mine", None)
        current = storage.write_if("lease.json", b"theirs", stale)
        with pytest.raises(PreconditionFailed):
            storage.delete_if("lease.json", stale)
        assert storage.read_tagged("lease.json") == (b"theirs", current)

    def test_a_tag_of_an_object_since_deleted_fails_both_ways(self, storage: Storage):
        """An unlocked lease: its holder's renewal and release both find it gone."""
        tag = storage.write_if("lease.json", b"mine", None)
        storage.delete("lease.json")
        with pytest.raises(PreconditionFailed):
            storage.write_if("lease.json", b"renewal", tag)
        with pytest.raises(PreconditionFailed):
            storage.delete_if("lease.json", tag)
        assert storage.read_tagged("lease.json") is None

    def test_check_reachable(self, storage: Storage):
        storage.check_reachable()
        storage.write("a.txt", b"1")
        storage.check_reachable()


class TestLocalStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path) -> LocalStorage:
        return LocalStorage(tmp_path / "root")  # made by the first write, as a bucket prefix is

    @pytest.fixture
    def other(self, tmp_path) -> LocalStorage:
        return LocalStorage(tmp_path / "other")


class TestS3Storage(StorageContract):
    @pytest.fixture
    def storage(self, make_bucket) -> S3Storage:
        return make_bucket("contract/root")  # a prefix, so keys are relative to it

    @pytest.fixture
    def other(self, make_bucket) -> S3Storage:
        return make_bucket("other")

    def test_times_are_those_a_plain_boto3_client_reads(self, storage: S3Storage):
        """Our clients read S3's times with the standard library, not dateutil: the same moments."""
        import boto3

        storage.write("a/b.nii", b"1")
        plain = boto3.client("s3", endpoint_url=storage.endpoint_url)
        [item] = plain.list_objects_v2(Bucket=storage.bucket, Prefix=storage._key("a/"))["Contents"]
        head = plain.head_object(Bucket=storage.bucket, Key=storage._key("a/b.nii"))
        [listed], stat = list(storage.list()), storage.stat("a/b.nii")
        assert stat is not None
        assert listed.modified == item["LastModified"].timestamp()
        assert stat.modified == head["LastModified"].timestamp()


def test_s3_times_are_read_as_botocore_reads_them():
    from botocore.utils import parse_timestamp as botocores

    from rbexport.storage.clients import parse_timestamp

    for value in (
        "2026-12-03T17:19:23.000Z",  # a listing's LastModified
        "2026-12-03T17:19:23.123456+01:00",
        "Thu, 03 Dec 2026 17:19:23 GMT",  # a header's
        "1733245163",
        1733245163,
        "2026-12-03T17:19:23",  # no zone: botocore's choice, local time
    ):
        assert parse_timestamp(value) == botocores(value), value
        assert parse_timestamp(value).utcoffset() == botocores(value).utcoffset(), value
    with pytest.raises(ValueError):
        parse_timestamp("tomorrow")
