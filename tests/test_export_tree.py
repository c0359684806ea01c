"""The names of the export tree are rbexport.export_tree's: every file a mask writer or a
training layout writes at an export root is one of ROOT_FILES, where a source is refused
(rbexport.run.locations), and the registry knows each writer's without importing it."""

from __future__ import annotations

import pytest

from rbexport.export_tree import ROOT_FILES
from rbexport.layouts import LAYOUTS, Dataset
from rbexport.layouts.labels import training_labels
from rbexport.mask_formats import INDEX_FILES, WRITERS, writer_named
from rbexport.options import ExportOptions
from rbexport.taxonomy import Taxonomy


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_writers_index_files_are_root_files(name):
    options = ExportOptions(mask_format=name)
    entries = [{"taskId": "t", "series": [{"name": "A", "segmentations": "segmentations/t/A.png"}]}]
    extras = Taxonomy(category_numbers={"lesion": 1}, colours={"lesion": (255, 0, 0)})
    written = [path for path, _ in writer_named(name).index_files(entries, options, extras)]
    assert set(written) <= set(ROOT_FILES), written
    assert set(written) == set(WRITERS[name].index_files)  # the registry's list is the writer's
    assert set(WRITERS[name].index_files) <= set(INDEX_FILES)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layouts_index_files_are_root_files(name):
    dataset = Dataset(training_labels({"lesion": 1}), ["CT"], {"case_001": 0})
    assert set(LAYOUTS[name].metadata_files(dataset)) <= set(ROOT_FILES)
