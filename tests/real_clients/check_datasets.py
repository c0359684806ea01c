"""Check training datasets written by rbexport (SPEC section 6) with the real readers.

Not a pytest test: it needs nnunetv2 and monai, which live in a venv of their own
(`make check-datasets-venv`), never in the project's .venv:

    .venv-datasets/bin/python tests/real_clients/check_datasets.py \
        --nnunet nnUNet_raw/Dataset501_Liver --msd out/msd

Prints one line per failure and one per dataset; exits 1 on any failure.
"""

import argparse
import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import monai
import nnunetv2  # noqa: F401  (fail early when the venv lacks it)
import numpy as np
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImage

# verify_dataset_integrity raises on missing files and unexpected labels, but only
# *prints* some problems ("Warning: Affine/Origin/Direction mismatch ...", "Error:
# Shape/Spacing mismatch ..."), from spawned worker processes. So it runs in a child
# interpreter (unbuffered, so the workers' prints survive) and its output is read.
VERIFY = (
    "import sys\n"
    "from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity\n"
    "verify_dataset_integrity(sys.argv[1], num_processes=2)\n"
)
PROBLEM = re.compile(r"^\s*(?:error|warning)\b.*$|^.*mismatch.*$", re.I | re.M)
FILE = re.compile(r"(?:Seg file: |in file )(\S+)")
DETAIL = re.compile(r"^(?:Expected|Found|(?:Shape|Spacing|Origin|Direction) (?:images?|seg)): .*$", re.M)


def check_nnunet(folder: Path, fail) -> int:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    run = subprocess.run([sys.executable, "-c", VERIFY, str(folder)], capture_output=True, text=True, env=env)
    out = run.stdout + run.stderr
    problems = list(PROBLEM.finditer(out))
    for m, end in zip(problems, [p.start() for p in problems[1:]] + [len(out)], strict=False):
        msg, where = m.group().strip(), FILE.search(out, m.end(), end)  # the block's seg file
        if where:
            msg += f" [{Path(where.group(1).rstrip('.')).name}]"
        fail(" ".join([msg] + [d.strip() for d in DETAIL.findall(out, m.end(), end)]))
    if run.returncode:
        fail("verify_dataset_integrity: " + (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1])

    ending = json.loads((folder / "dataset.json").read_text())["file_ending"]
    cases = {p.name[: -len(ending) - 5] for p in (folder / "imagesTr").glob("*" + ending)}
    splits_file = folder / "splits_final.json"
    if splits_file.exists():
        splits = json.loads(splits_file.read_text())
        if len(splits) != 5:
            fail(f"splits_final.json has {len(splits)} folds, not 5")
        vals = [c for s in splits for c in s["val"]]
        if sorted(vals) != sorted(cases):
            fail(f"splits_final.json: the val sets do not partition the {len(cases)} cases of imagesTr")
        unknown = {c for s in splits for c in s["train"] + s["val"]} - cases
        if unknown:
            fail(f"splits_final.json names cases not in imagesTr: {sorted(unknown)}")
        for k, s in enumerate(splits):
            if set(s["train"]) != cases - set(s["val"]):
                fail(f"splits_final.json fold {k}: train is not the cases minus val")
    return len(cases)


def check_msd(folder: Path, fail) -> int:
    meta = json.loads((folder / "dataset.json").read_text())
    labels = sorted(int(k) for k in meta["labels"])
    if labels != list(range(len(labels))):
        fail(f"dataset.json labels {labels} are not 0..{len(labels) - 1}")
    items = load_decathlon_datalist(
        str(folder / "dataset.json"), is_segmentation=True, data_list_key="training", base_dir=str(folder)
    )
    if len(items) != meta["numTraining"]:
        fail(f"numTraining is {meta['numTraining']} but training lists {len(items)}")
    load = LoadImage(image_only=False)
    for item in items:
        case = Path(item["label"]).name
        if item.get("fold") not in range(5):
            fail(f"{case}: fold {item.get('fold')!r} is not 0..4")
        try:
            image, image_meta = load(item["image"])
            label, label_meta = load(item["label"])
        except Exception as e:  # noqa: BLE001
            fail(f"{case}: cannot load: {e}")
            continue
        channels = image.shape[3] if image.ndim == label.ndim + 1 else 1
        if tuple(image.shape[: label.ndim]) != tuple(label.shape) or image.ndim > label.ndim + 1:
            fail(f"{case}: image shape {tuple(image.shape)} != label shape {tuple(label.shape)}")
        if channels != len(meta["modality"]):
            fail(f"{case}: {channels} channel(s), dataset.json modality has {len(meta['modality'])}")
        a_img, a_lab = np.asarray(image_meta["affine"]), np.asarray(label_meta["affine"])
        if not np.allclose(a_img, a_lab, atol=1e-3, rtol=0):
            fail(f"{case}: affine differs from its image by {np.abs(a_img - a_lab).max():.4g}")
        values = np.unique(np.asarray(label))
        if not np.all(values == np.round(values)):
            fail(f"{case}: label has non-integer values")
        extra = sorted(set(np.round(values).astype(int).tolist()) - set(labels))
        if extra:
            fail(f"{case}: label values {extra} not in dataset.json labels {labels}")
    return len(items)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nnunet", action="append", default=[], type=Path, metavar="DIR")
    parser.add_argument("--msd", action="append", default=[], type=Path, metavar="DIR")
    args = parser.parse_args()
    if not args.nnunet and not args.msd:
        parser.error("give at least one --nnunet or --msd folder")
    print(f"nnunetv2 {version('nnunetv2')}, monai {monai.__version__}")
    failed = 0
    for kind, check, folders in (("nnunet", check_nnunet, args.nnunet), ("msd", check_msd, args.msd)):
        for folder in folders:
            problems = []

            def fail(msg, folder=folder, kind=kind, problems=problems):
                problems.append(msg)
                print(f"  FAIL {kind} {folder}: {msg}")

            try:
                n = check(folder, fail)
            except Exception as e:  # noqa: BLE001  (a malformed dataset.json, say)
                fail(f"{type(e).__name__}: {e}")
                n = "?"
            print(f"{'FAIL' if problems else 'OK  '} {kind} {folder} ({n} cases, {len(problems)} problems)")
            failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
