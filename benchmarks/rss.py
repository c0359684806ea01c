"""`python -m benchmarks.rss <rbexport arguments>`: run the CLI in this process, print its peak RSS.

The peak is VmHWM, this process's own high-water mark (ru_maxrss would start from the
parent's size at fork).
"""

import json
import sys
from pathlib import Path

from rbexport.app.cli import main


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    code = main(sys.argv[1:])
    print(json.dumps({"exit": code, "peak_rss": peak_rss()}))
    sys.exit(code)
