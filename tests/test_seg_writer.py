"""The DICOM SEG writer (rbexport.mask_formats.seg_writer) against highdicom's constructor.

rbexport writes a series' SEG directly, for speed; highdicom's `Segmentation` is the
reference. For each kind of input the two files must hold the same dataset, element
for element (sequences, codes, geometry, references, dimension indices, pixel data),
except what differs on every call: creation dates and times, and the random Dimension
Organization UID (which must still be one UID, used everywhere it appears). Each SEG
is also read back by highdicom and compared, segment by segment, with the label map.
"""

from __future__ import annotations

from io import BytesIO

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from rbexport.app.sample_images import dicom_series_on_grid
from rbexport.images.dicom import read_dicom_headers
from rbexport.mask_formats import dicom_seg
from rbexport.mask_formats.dicom_seg import Segment, encode_segmentation, highdicom_segmentation, plan_segments
from rbexport.nifti import LabelMap
from rbexport.segment_map import parse_segment_map
from rbexport.structures.masks import VoxelIndex

# Set on every call: dates, times, and highdicom's random Dimension Organization UID.
VOLATILE = {
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ContentDate",
    "ContentTime",
    "SeriesDate",
    "SeriesTime",
    "ContributionDateTime",
    "DimensionOrganizationUID",
}
AFFINE = np.array([[0.7, 0, 0, 10.0], [0, 0.8, 0, -20.0], [0, 0, 2.0, 30.0], [0, 0, 0, 1]])


def differences(ours: Dataset, theirs: Dataset, where: str = "") -> list[str]:
    """Every element that differs between two datasets, by path (VOLATILE ones excepted)."""
    found = []
    for tag in sorted(set(ours.keys()) | set(theirs.keys())):
        keyword = pydicom.datadict.keyword_for_tag(tag) or str(tag)
        if keyword in VOLATILE:
            continue
        path = f"{where}{keyword}"
        if tag not in ours or tag not in theirs:
            found.append(f"{path}: only in {'highdicom' if tag in theirs else 'ours'}")
            continue
        mine, reference = ours[tag], theirs[tag]
        if mine.VR != reference.VR:
            found.append(f"{path}: VR {mine.VR} vs {reference.VR}")
        if isinstance(mine.value, DicomSequence) or isinstance(reference.value, DicomSequence):
            if len(mine.value) != len(reference.value):
                found.append(f"{path}: {len(mine.value)} items vs {len(reference.value)}")
                continue
            for number, (item, other) in enumerate(zip(mine.value, reference.value, strict=True)):
                found += differences(item, other, f"{path}[{number}].")
        elif mine.value != reference.value:
            found.append(f"{path}: {str(mine.value)[:80]!r} vs {str(reference.value)[:80]!r}")
    return found


def organization_uids(dataset: Dataset) -> set[str]:
    return {str(item.DimensionOrganizationUID) for item in dataset.DimensionIndexSequence} | {
        str(item.DimensionOrganizationUID) for item in dataset.DimensionOrganizationSequence
    }


def make_case(
    volume: np.ndarray, segment_map: dict, *, flipped: bool = False, frames_backwards: bool = False, **series_options
):
    affine = AFFINE.copy()
    if flipped:  # the images' slices run the other way along the label's third axis
        affine[2, 2], affine[2, 3] = -2.0, 40.0
    image = nib.Nifti1Image(volume, affine)
    image.header.set_data_dtype(volume.dtype)
    label_map = LabelMap(volume, image.header)
    pixels = np.zeros(volume.shape, np.int16)
    series = dicom_series_on_grid(pixels, affine, **series_options)
    if frames_backwards:  # a multi-frame file whose frames go from the last slice to the first
        [(name, raw)] = series
        dataset = pydicom.dcmread(BytesIO(raw))
        dataset.PerFrameFunctionalGroupsSequence = DicomSequence(list(dataset.PerFrameFunctionalGroupsSequence)[::-1])
        stream = BytesIO()
        dataset.save_as(stream, enforce_file_format=True)
        series = [(name, stream.getvalue())]
    headers = read_dicom_headers(series)
    index = VoxelIndex(volume)
    segments = plan_segments(parse_segment_map(segment_map), index, False, None)
    return segments, index, label_map, headers


def both(case, overlapping: tuple[int, ...] = (), **seg_options) -> tuple[Dataset, Dataset]:
    """Our SEG and highdicom's; `seg_options`: seg_type and compression, as the export passes them."""
    segments, index, label_map, headers = case
    if overlapping:  # segment k also holds the values listed: a BINARY SEG
        segments = [Segment(s.number, s.key, s.category, tuple(sorted({*s.values, *overlapping}))) for s in segments]
    colours = {"Liver": (200, 40, 40)}
    ours = encode_segmentation(segments, index, label_map, headers, "series-1", "seed", colours, **seg_options)
    theirs = highdicom_segmentation(segments, index, label_map, headers, "series-1", "seed", colours, **seg_options)
    return pydicom.dcmread(BytesIO(ours)), pydicom.dcmread(BytesIO(theirs))


def assert_same(ours: Dataset, theirs: Dataset) -> None:
    for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID"):
        assert ours.file_meta[keyword].value == theirs.file_meta[keyword].value, keyword
    assert differences(ours, theirs) == []
    assert len(organization_uids(ours)) == 1


def labelled_volume(shape=(6, 5, 4)) -> tuple[np.ndarray, dict]:
    volume = np.zeros(shape, np.uint8)
    volume[1:3, 1:3, 1] = 1
    volume[3:5, 2:4, 1:3] = 2
    volume[0, 0, 3] = 3
    return volume, {"1": {"category": "Liver"}, "2": {"category": "Spleen"}, "3": {"category": "Tumor"}}


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="single-frame"),
        pytest.param({"multiframe": True}, id="multi-frame"),
        pytest.param({"flipped": True}, id="slices-the-other-way"),
        pytest.param({"multiframe": True, "flipped": True}, id="multi-frame-the-other-way"),
        pytest.param({"multiframe": True, "frames_backwards": True}, id="multi-frame-stored-backwards"),
    ],
)
@pytest.mark.parametrize("overlapping", [(), (3,)], ids=["labelmap", "binary"])
def test_the_writer_gives_highdicoms_dataset(options, overlapping):
    volume, segment_map = labelled_volume()
    ours, theirs = both(make_case(volume, segment_map, **options), overlapping)
    assert ours.SegmentationType == ("BINARY" if overlapping else "LABELMAP")
    assert_same(ours, theirs)


SOURCE_LAYOUTS = [
    pytest.param({}, id="single-frame"),
    pytest.param({"multiframe": True}, id="multi-frame"),
    pytest.param({"flipped": True}, id="slices-the-other-way"),
    pytest.param({"multiframe": True, "frames_backwards": True}, id="multi-frame-stored-backwards"),
]
TRANSFER_SYNTAXES = {"none": "1.2.840.10008.1.2.1", "rle": "1.2.840.10008.1.2.5", "jpegls": "1.2.840.10008.1.2.4.80"}


@pytest.mark.parametrize("options", SOURCE_LAYOUTS)
@pytest.mark.parametrize(
    ("seg_options", "kind"),
    [
        pytest.param({"seg_type": "binary"}, "BINARY", id="binary-without-overlaps"),
        pytest.param({"seg_type": "labelmap"}, "LABELMAP", id="labelmap"),
        pytest.param({"compression": "rle"}, "LABELMAP", id="auto-rle"),
        pytest.param({"seg_type": "labelmap", "compression": "jpegls"}, "LABELMAP", id="labelmap-jpegls"),
    ],
)
def test_seg_type_and_compression_give_highdicoms_dataset_with_that_transfer_syntax(options, seg_options, kind):
    """The pixel data compared are the encapsulated frames themselves: the same encoder, the same bytes."""
    volume, segment_map = labelled_volume()
    ours, theirs = both(make_case(volume, segment_map, **options), **seg_options)
    assert ours.SegmentationType == kind
    assert ours.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[seg_options.get("compression", "none")]
    assert ours.SOPClassUID == ("1.2.840.10008.5.1.4.1.1.66.4" if kind == "BINARY" else "1.2.840.10008.5.1.4.1.1.66.7")
    if kind == "BINARY":
        assert ours.SegmentsOverlap == "NO"
    assert_same(ours, theirs)


def test_a_binary_seg_of_one_segment_and_a_compressed_16_bit_labelmap():
    volume = np.zeros((6, 5, 3), np.uint8)
    volume[1:4, 2:4, 1] = 1
    ours, theirs = both(make_case(volume, {"1": {"category": "Liver"}}), seg_type="binary")
    assert ours.NumberOfFrames == 1 and len(ours.SegmentSequence) == 1
    assert_same(ours, theirs)
    flat = np.zeros(20 * 16 * 2, np.uint16)
    flat[: 300 * 2 : 2] = np.arange(1, 301)
    wide = flat.reshape((20, 16, 2), order="F")
    case = make_case(wide, {str(value): {"category": f"c{value}"} for value in range(1, 301)})
    for compression in ("rle", "jpegls"):
        ours, theirs = both(case, compression=compression)
        assert ours.BitsAllocated == 16
        assert_same(ours, theirs)


@pytest.mark.parametrize("options", SOURCE_LAYOUTS)
@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_compressed_and_binary_segs_read_back_voxel_for_voxel_as_the_uncompressed_one_and_the_label_map(options, dense):
    """By highdicom (segread, get_volume, pixels by source frame) and by pydicom (pixel_array)."""
    volume, segment_map = labelled_volume((6, 5, 5))
    if dense:
        volume = np.random.default_rng(7).integers(0, 4, size=(6, 5, 5)).astype(np.uint8)
        volume[:, :, 1] = 0
    segments, index, label_map, headers = make_case(volume, segment_map, **options)

    def read(**seg_options) -> tuple[Dataset, hd.seg.Segmentation]:
        data = encode_segmentation(segments, index, label_map, headers, "s", "seed", **seg_options)
        return pydicom.dcmread(BytesIO(data)), hd.seg.segread(BytesIO(data))

    plain, plain_seg = read()
    for compression in ("rle", "jpegls"):
        raw, seg = read(compression=compression)
        assert raw.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[compression]
        assert raw.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(raw.pixel_array, plain.pixel_array), compression
        assert np.array_equal(seg.get_volume().array, plain_seg.get_volume().array), compression
    for seg_options in ({"compression": "rle"}, {"compression": "jpegls"}, {"seg_type": "binary"}):
        raw, seg = read(**seg_options)
        volume_read = seg.get_volume(combine_segments=False)
        for number, segment in enumerate(segments, 1):
            got = _on_label_grid(volume_read, number, label_map)
            assert np.array_equal(got, np.isin(volume, segment.values)), (seg_options, number)


def test_a_seg_type_or_compression_the_overlaps_do_not_allow_fails_the_series_with_a_reason():
    from rbexport.errors import TaskDataError

    volume, segment_map = labelled_volume()
    segments, index, label_map, headers = make_case(volume, segment_map)
    overlapping = [
        Segment(s.number, s.key, s.category, (*s.values, 3) if s.number == 1 else s.values) for s in segments
    ]
    for writer in (encode_segmentation, highdicom_segmentation):
        with pytest.raises(TaskDataError, match=r"series s: segments Liver \(1\), Tumor \(3\) overlap, and a LABELMAP"):
            writer(overlapping, index, label_map, headers, "s", "seed", seg_type="labelmap")
        with pytest.raises(TaskDataError, match="so its DICOM SEG is BINARY, whose 1-bit frames cannot be compressed"):
            writer(overlapping, index, label_map, headers, "s", "seed", compression="rle")
    binary = pydicom.dcmread(BytesIO(encode_segmentation(overlapping, index, label_map, headers, "s", "seed")))
    assert binary.SegmentationType == "BINARY" and binary.SegmentsOverlap == "YES"


def test_a_gap_between_labelled_slices_is_not_a_3d_organization_and_empty_slices_are_omitted():
    volume, segment_map = labelled_volume((6, 5, 6))
    volume[:, :, 2] = 0
    volume[1, 1, 4] = 2
    ours, theirs = both(make_case(volume, segment_map))
    assert "DimensionOrganizationType" not in ours and ours.NumberOfFrames == 3
    assert_same(ours, theirs)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="single-frame"),
        pytest.param({"flipped": True}, id="slices-the-other-way"),
        pytest.param({"multiframe": True, "frames_backwards": True}, id="multi-frame-stored-backwards"),
    ],
)
def test_a_dense_map_and_frames_of_whole_bytes(options):
    """More than half the voxels labelled (the index keeps counts, not positions), 8x4 frames."""
    rng = np.random.default_rng(3)
    volume = rng.integers(0, 4, size=(8, 4, 5)).astype(np.uint8)
    volume[:, :, 2] = 0
    segment_map = {"1": {"category": "Liver"}, "2": {"category": "Spleen"}, "3": {"category": "Tumor"}}
    case = make_case(volume, segment_map, **options)
    assert not case[1].sparse
    for overlapping in ((), (1,)):
        ours, theirs = both(case, overlapping)
        assert_same(ours, theirs)


def test_a_2d_series():
    volume = np.zeros((6, 5), np.uint8)
    volume[1:4, 2:4] = 1
    volume[4, 4] = 2
    case = make_case(volume, {"1": {"category": "Liver"}, "2": {"category": "Spleen"}})
    for overlapping in ((), (1,)):
        ours, theirs = both(case, overlapping)
        assert_same(ours, theirs)


def test_more_than_255_segments_take_16_bit_labels():
    flat = np.zeros(20 * 16 * 2, np.uint16)
    flat[: 300 * 2 : 2] = np.arange(1, 301)
    volume = flat.reshape((20, 16, 2), order="F")
    case = make_case(volume, {str(value): {"category": f"c{value}"} for value in range(1, 301)})
    ours, theirs = both(case)
    assert ours.BitsAllocated == 16
    assert_same(ours, theirs)


@pytest.mark.parametrize(
    ("options", "dense"),
    [
        pytest.param({}, False, id="single-frame"),
        pytest.param({"multiframe": True}, False, id="multi-frame"),
        pytest.param({"flipped": True}, False, id="slices-the-other-way"),
        pytest.param({"multiframe": True, "frames_backwards": True}, False, id="multi-frame-stored-backwards"),
        pytest.param({"multiframe": True, "frames_backwards": True}, True, id="dense-multi-frame-stored-backwards"),
        pytest.param({"flipped": True}, True, id="dense-slices-the-other-way"),
    ],
)
def test_highdicom_reads_each_segment_back_as_the_label_map_holds_it(options, dense):
    volume, segment_map = labelled_volume((6, 5, 5))
    if dense:  # most voxels labelled, no two slices alike
        volume = np.random.default_rng(5).integers(0, 4, size=(6, 5, 5)).astype(np.uint8)
        volume[:, :, 1] = 0
    segments, index, label_map, headers = make_case(volume, segment_map, **options)
    assert index.sparse != dense
    overlapping = [
        Segment(s.number, s.key, s.category, (*s.values, 3) if s.number == 1 else s.values) for s in segments
    ]
    for planned in (segments, overlapping):
        data = pydicom.dcmread(BytesIO(encode_segmentation(planned, index, label_map, headers, "s", "seed")))
        seg = hd.seg.Segmentation.from_dataset(data, copy=False)
        volume_read = seg.get_volume(combine_segments=False)  # highdicom's own geometry, in its own order
        for number, segment in enumerate(planned, 1):
            expected = np.isin(volume, segment.values)
            got = _on_label_grid(volume_read, number, label_map)
            assert np.array_equal(got, expected), f"segment {number}"


def _on_label_grid(volume: hd.Volume, number: int, label_map: LabelMap) -> np.ndarray:
    """Segment `number` of a highdicom Volume, resampled onto nothing: put onto the label's grid
    by its affine (axis order and flips only), so both are indexed alike."""
    mask = volume.array[..., number - 1] if volume.array.ndim == 4 else volume.array == number
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    theirs = lps_to_ras @ volume.affine
    ours = label_map.header.get_best_affine()
    full = np.zeros(label_map.values.shape if label_map.values.ndim == 3 else (*label_map.values.shape, 1), bool)
    index = np.argwhere(mask)
    world = theirs @ np.c_[index, np.ones(len(index))].T
    voxels = np.rint(np.linalg.inv(ours) @ world).astype(int)[:3].T
    full[tuple(voxels.T)] = True
    return full


def test_a_source_without_patient_coordinates_goes_to_highdicom(monkeypatch):
    volume, segment_map = labelled_volume()
    segments, index, label_map, headers = make_case(volume, segment_map)
    called = []
    monkeypatch.setattr(dicom_seg, "highdicom_segmentation", lambda *a, **k: called.append(a) or b"")
    for dataset in headers.datasets:
        del dataset.FrameOfReferenceUID
    encode_segmentation(segments, index, label_map, headers, "s", "seed")
    assert called
