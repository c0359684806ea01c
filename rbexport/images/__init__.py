"""Images of a series (SPEC 5, `image_format = nifti`); plain Python, never imports Prefect.

- `volume`: ImageVolume (voxels in NIfTI order, RAS+ affine) and `encode_nifti`
- `read`: `read_image_series`, one series' items (DICOM, NIfTI or a 2D picture) to a volume
- `dicom`: `read_dicom_series`, a DICOM series to a volume, values as ITK/GDCM give them
- `geometry`: `onto_label_grid`, the volume on its label map's voxel grid, or a reason why not
"""
