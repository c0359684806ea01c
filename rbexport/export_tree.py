"""The names of an export's tree, in one place: the files at an export root, the folders
that hold the task files, and rbexport's own objects under `.rbexport/`.

An export root (the destination, or each variant folder of a run with several variants):

    tasks.json                  every task's entry (TASKS_JSON), written last
    export-report.json          the run report (REPORT_JSON, rbexport.report)
    class_map.json              PNG's value -> class (CLASS_MAP_JSON, rbexport.mask_formats.png)
    dataset.json                a training layout's index (DATASET_JSON, rbexport.layouts)
    splits_final.json           nnU-Net's folds (SPLITS_JSON)
    segmentations/<task>/...    masks (SEGMENTATIONS_FOLDER)
    images/<task>/...           images, when exported (IMAGES_FOLDER)
    imagesTr/, labelsTr/        a training layout's cases (DATASET_IMAGES_FOLDER, DATASET_LABELS_FOLDER)
    .rbexport/state.json        what the export was made from (STATE_KEY, rbexport.incremental)
    .rbexport/releases.json     the releases made from the export (RELEASES_KEY)

The destination's `.rbexport/lock` is the lease (LEASE_KEY, rbexport.lease). A release
holds a copy of an export and `release.json` (RELEASE_JSON), and while it is being made
`.rbexport/release-partial.json` (PARTIAL_KEY).

Standard library only (nothing at all, in fact): any module may import it, the
command-line app included, without pulling anything in.
"""

from __future__ import annotations

TASKS_JSON = "tasks.json"
REPORT_JSON = "export-report.json"
CLASS_MAP_JSON = "class_map.json"
DATASET_JSON = "dataset.json"
SPLITS_JSON = "splits_final.json"

SEGMENTATIONS_FOLDER = "segmentations"
IMAGES_FOLDER = "images"
DATASET_IMAGES_FOLDER = "imagesTr"
DATASET_LABELS_FOLDER = "labelsTr"
# The folders of an export root that hold task files (masks, images, a dataset's cases):
# every file a state records lies in one of them, so that no state, however it was
# edited, makes a run read or delete anything else (the source, tasks.json, the state).
EXPORT_FOLDERS = (SEGMENTATIONS_FOLDER, IMAGES_FOLDER, DATASET_IMAGES_FOLDER, DATASET_LABELS_FOLDER)

# rbexport's own objects: an export's state and releases, the destination's lease, a
# release in the making.
RBEXPORT_FOLDER = ".rbexport"
STATE_KEY = f"{RBEXPORT_FOLDER}/state.json"
LEASE_KEY = f"{RBEXPORT_FOLDER}/lock"
RELEASES_KEY = f"{RBEXPORT_FOLDER}/releases.json"  # in the export: the releases made from it
PARTIAL_KEY = f"{RBEXPORT_FOLDER}/release-partial.json"  # in a release until it is finished
RELEASE_JSON = "release.json"  # in a release, written last

# Files at an export root: tasks.json, the report, a mask format's index files (PNG's class
# map: every writer's index files are here, tests/test_export_tree.py), a dataset's index
# files. A source inside one of them is refused (rbexport.run.locations).
ROOT_FILES = (TASKS_JSON, REPORT_JSON, CLASS_MAP_JSON, DATASET_JSON, SPLITS_JSON)
