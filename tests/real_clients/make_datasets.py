"""Export generated projects as training datasets with the `rbexport` command, for check_datasets.py.

    python tests/real_clients/make_datasets.py OUT

OUT/source-mr: ten MR studies of two channels (T1, FLAIR), two per patient;
OUT/source-ct: ten CT studies of one channel. They become
OUT/nnUNet_raw/Dataset501_Brain (channels, folds by patient), OUT/nnUNet_raw/Dataset502_CT
(one case per annotated series) and OUT/Task01_Brain (MSD, channels stacked);
OUT/releases/nnUNet_raw/Dataset501_Brain is a release of Dataset501 (`rbexport release
create`), which nnU-Net must read as it is. Each
command is printed before it runs; the script stops at the first that fails.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from rbexport.app.sample import write_training_project
from rbexport.storage import LocalStorage

RBEXPORT = str(Path(sys.executable).with_name("rbexport"))


def run(*arguments: str) -> None:
    print("$ rbexport " + " ".join(arguments), flush=True)
    subprocess.run([RBEXPORT, *arguments], check=True)


def main() -> int:
    out = Path(sys.argv[1])
    shutil.rmtree(out, ignore_errors=True)
    write_training_project(LocalStorage(out / "source-mr"), tasks=10, channels=("T1", "FLAIR"), modality="MR")
    write_training_project(LocalStorage(out / "source-ct"), tasks=10, channels=("CT",), modality="CT")
    run(
        "run",
        "--source",
        str(out / "source-mr"),
        "--dest",
        str(out / "nnUNet_raw/Dataset501_Brain"),
        "--layout",
        "nnunet",
        "--channels",
        "T1,FLAIR",
        "--group-by",
        "metaData.patientId",
        "--dataset-name",
        "Brain",
        "--description",
        "generated MR studies",
    )
    run(
        "run", "--source", str(out / "source-ct"), "--dest", str(out / "nnUNet_raw/Dataset502_CT"), "--layout", "nnunet"
    )
    run(
        "run",
        "--source",
        str(out / "source-mr"),
        "--dest",
        str(out / "Task01_Brain"),
        "--layout",
        "msd",
        "--channels",
        "T1,FLAIR",
        "--dataset-name",
        "Brain",
    )
    run(
        "release",
        "create",
        str(out / "nnUNet_raw/Dataset501_Brain"),
        str(out / "releases/nnUNet_raw/Dataset501_Brain"),
        "--name",
        "brain-v1",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
