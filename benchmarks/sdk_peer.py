"""Runs the RedBrick SDK's converter on label maps, for comparison. Runs in the SDK's own venv.

    python sdk_peer.py job.json   ->   prints {"seconds": [...]} (one per run)

job.json: {"files": [...], "labels": [...], "semantic": bool, "binary": bool | null, "runs": n}
Each run converts every file in a fresh copy (the copy is not timed), one after another,
with `redbrick.utils.nifti.process_download`: what `redbrick export` does per label map.
"""

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from redbrick.utils.nifti import process_download


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    seconds, written = [], 0
    for _ in range(job["runs"]):
        with tempfile.TemporaryDirectory() as folder:
            copies = []
            for number, path in enumerate(job["files"]):
                copy = Path(folder) / f"mask-{number}.nii.gz"
                shutil.copyfile(path, copy)
                copies.append(str(copy))
            started = time.perf_counter()
            for copy in copies:
                process_download(
                    [dict(label) for label in job["labels"]],
                    copy,
                    False,
                    {},
                    job["semantic"],
                    job["binary"],
                    False,
                    None,
                    True,
                )
            seconds.append(time.perf_counter() - started)
            written = sum(1 for path in Path(folder).rglob("*.nii.gz") if path.parent != Path(folder))
    print(json.dumps({"seconds": seconds, "files": written}))


if __name__ == "__main__":
    main()
