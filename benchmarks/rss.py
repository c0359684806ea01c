"""`python -m benchmarks.rss <rbexport arguments>`: run the CLI in this process, print its peak RSS."""

import json
import resource
import sys

from rbexport.cli import main

if __name__ == "__main__":
    code = main(sys.argv[1:])
    print(json.dumps({"exit": code, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
    sys.exit(code)
