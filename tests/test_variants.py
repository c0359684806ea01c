"""Several structure variants in one run."""

from __future__ import annotations

import json

import pytest
from conftest import after_engine_line, tree

import rbexport.source
from rbexport.engine import run_export
from rbexport.errors import ConfigurationError
from rbexport.options import ExportOptions
from rbexport.variants import Preset, Variant, parse_variant_argument, resolve_variants

CUSTOM = Variant(name="raw-single", options=ExportOptions(binary_mask=False, compress=False, no_consensus=True))
ALL_VARIANTS = [*Preset, CUSTOM]


def test_several_variants_in_one_run_equal_each_run_alone_file_for_file(sample_source, tmp_path):
    together = tmp_path / "together"
    reports = run_export(str(sample_source), str(together), ExportOptions(), variants=ALL_VARIANTS)
    assert [report.variant for report in reports] == [*(preset.value for preset in Preset), "raw-single"]
    assert all(report.succeeded and len(report.exported) == 6 for report in reports)

    for variant in ALL_VARIANTS:
        name = variant.value if isinstance(variant, Preset) else variant.name
        alone = tmp_path / "alone" / name
        run_export(str(sample_source), str(alone), ExportOptions(), variants=[variant])
        written_together, written_alone = tree(together / name), tree(alone)
        del written_together["export-report.json"], written_alone["export-report.json"]
        assert written_together == written_alone, name
    assert sorted(path.name for path in together.iterdir()) == sorted(
        [preset.value for preset in Preset] + ["raw-single"]
    )


def test_each_mask_is_read_and_decoded_once_for_all_variants(sample_source, tmp_path, monkeypatch):
    decoded = []
    real = rbexport.source.read_label_map
    monkeypatch.setattr(rbexport.source, "read_label_map", lambda raw: decoded.append(len(raw)) or real(raw))
    run_export(str(sample_source), str(tmp_path / "export"), ExportOptions(), variants=ALL_VARIANTS)
    masks = list((sample_source / "masks").iterdir())
    assert len(decoded) == len(masks)


def test_presets_fix_the_structure_and_keep_consensus_and_compression_from_the_options():
    options = ExportOptions(no_consensus=True, compress=False)
    resolved = {variant.name: variant.options for variant in resolve_variants(options, list(Preset))}
    assert resolved["semantic-binary"] == ExportOptions(
        semantic_mask=True, binary_mask=True, no_consensus=True, compress=False
    )
    assert resolved["single"].binary_mask is False and resolved["standard"].binary_mask is None
    assert resolve_variants(options, None) == [Variant(name="export", options=options)]


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        (["nope"], "unknown variant preset 'nope'"),
        (["semantic", Variant(name="semantic")], "variant names must be unique; repeated: semantic"),
        ([Variant(name="../up")], "is not a safe folder name"),
    ],
)
def test_bad_variants_are_configuration_errors(variants, message):
    with pytest.raises(ConfigurationError, match=message):
        resolve_variants(ExportOptions(), variants)


def test_variant_arguments_on_the_command_line():
    assert parse_variant_argument("semantic-binary") == Preset.semantic_binary
    assert parse_variant_argument("raw:compress=false,binary_mask=auto,semantic_mask=yes") == Variant(
        name="raw", options=ExportOptions(compress=False, binary_mask=None, semantic_mask=True)
    )
    with pytest.raises(ConfigurationError, match="unknown variant 'bogus'"):
        parse_variant_argument("bogus")
    with pytest.raises(ConfigurationError, match="expected option=value"):
        parse_variant_argument("raw:compress")
    with pytest.raises(ConfigurationError, match="colour"):
        parse_variant_argument("raw:colour=red")


def test_cli_variants_prune_and_full(run_cli, sample_source, tmp_path):
    destination = tmp_path / "export"
    result = run_cli(
        "run",
        "--source",
        str(sample_source),
        "--dest",
        str(destination),
        "--variant",
        "semantic-binary",
        "--variant",
        "plain:binary_mask=false,compress=false",
        engine="local",
    )
    assert result.returncode == 0, result.stderr
    assert "semantic-binary: 6 tasks exported, 0 failed" in result.stdout
    assert "plain: 6 tasks exported, 0 failed" in result.stdout
    assert (destination / "semantic-binary/segmentations/Brain_004/T2/category-3.nii.gz").exists()
    assert (destination / "plain/segmentations/Brain_004/T2.nii").exists()

    tasks = json.loads((sample_source / "tasks.json").read_text())
    (sample_source / "tasks.json").write_text(json.dumps(tasks[1:]))
    result = run_cli(
        "run",
        "--source",
        str(sample_source),
        "--dest",
        str(destination),
        "--variant",
        "semantic-binary",
        "--variant",
        "plain:binary_mask=false,compress=false",
        "--prune",
        engine="local",
    )
    assert result.returncode == 0, result.stderr
    assert "plain: 0 tasks exported, 5 skipped as unchanged, 0 failed; 2 files, " in result.stdout
    assert "1 pruned" in result.stdout
    assert not (destination / "plain/segmentations/Brain_001").exists()
    assert "(5 unchanged, skipped)" in result.stderr

    result = run_cli(
        "run", "--source", str(sample_source), "--dest", str(destination), "--variant", "plain:x=1", engine="local"
    )
    assert result.returncode == 2 and "rbexport: error: --variant 'plain:x=1': x: " in result.stderr
    result = run_cli(
        "run",
        "--source",
        str(sample_source),
        "--dest",
        str(destination),
        "--semantic",
        "--variant",
        "binary",
        engine="local",
    )
    assert result.returncode == 2 and "name each structure as a variant instead" in result.stderr
    result = run_cli(
        "run",
        "--source",
        str(sample_source),
        "--dest",
        str(destination / "plain"),
        "--full",
        "--single-mask",
        "--uncompressed",
        engine="local",
    )
    assert result.returncode == 0 and "5 tasks exported, 0 failed" in result.stdout


# One destination, one layout: an export at its root, or variant folders, never both.


def test_a_root_export_into_variant_folders_is_refused_and_writes_nothing(sample_source, tmp_path):
    destination = tmp_path / "export"
    run_export(str(sample_source), str(destination), ExportOptions(), variants=["standard", "semantic"])
    before = tree(destination)
    with pytest.raises(
        ConfigurationError,
        match=r"already holds variant folders \(semantic, standard\) and this run "
        r"writes one export at its root: .*--replace-layout",
    ):
        run_export(str(sample_source), str(destination), ExportOptions())
    assert tree(destination) == before


def test_variant_folders_into_a_root_export_are_refused(sample_source, tmp_path):
    destination = tmp_path / "export"
    run_export(str(sample_source), str(destination), ExportOptions())
    before = tree(destination)
    with pytest.raises(
        ConfigurationError,
        match=r"already holds one export at its root and this run writes "
        r"variant folders \(standard, semantic\)",
    ):
        run_export(str(sample_source), str(destination), ExportOptions(), variants=["standard", "semantic"])
    assert tree(destination) == before


def test_more_variant_folders_beside_existing_ones_are_the_same_layout(sample_source, tmp_path):
    destination = tmp_path / "export"
    run_export(str(sample_source), str(destination), ExportOptions(), variants=["standard", "semantic"])
    reports = run_export(str(sample_source), str(destination), ExportOptions(), variants=["binary", "semantic"])
    assert all(report.succeeded for report in reports)
    assert {"standard/tasks.json", "binary/tasks.json", "semantic/tasks.json"} <= set(tree(destination))


def test_replace_layout_deletes_the_other_export_then_writes(sample_source, tmp_path):
    destination = tmp_path / "export"
    run_export(str(sample_source), str(destination), ExportOptions(), variants=["standard", "semantic"])
    run_export(str(sample_source), str(destination), ExportOptions(), replace_layout=True)
    alone = tmp_path / "alone"
    run_export(str(sample_source), str(alone), ExportOptions())
    written, expected = tree(destination), tree(alone)
    del written["export-report.json"], expected["export-report.json"]
    assert written == expected  # nothing of the variant folders is left


def test_the_cli_refuses_a_mismatched_layout_with_exit_code_2(run_cli, sample_source, tmp_path):
    destination = tmp_path / "export"
    run_export(str(sample_source), str(destination), ExportOptions())
    result = run_cli(
        "run",
        "--source",
        str(sample_source),
        "--dest",
        str(destination),
        "--variant",
        "standard",
        "--variant",
        "semantic",
        engine="local",
    )
    assert result.returncode == 2, result.stderr
    assert after_engine_line(result.stderr) == [
        f"rbexport: error: {destination} already holds one export at its root and this run writes variant folders "
        "(standard, semantic): choose another destination, or replace that export (--replace-layout, flow parameter "
        "replace_layout)"
    ]
