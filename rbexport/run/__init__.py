"""A whole export run, without Prefect: prepare, (export each task), publish.

`prepare_run` decides everything once: locations, variants, the tasks to export for each
variant (the unchanged ones are skipped) and the folder each task gets. `publish_export`
writes, for every variant, tasks.json (after every mask), the state and the report. The
fan-out in between is rbexport.engine's, under the Prefect flow or the local engine.

One module per phase; this package only gathers their public names:

- `locations`: the source and the destination checked (`check_locations`), and the
  destination's lease (`destination_lease`)
- `plan`: reading and filtering the source's tasks, one job per task (`prepare_run`,
  `select_tasks`, `check_filters`, `plan_jobs`)
- `decide`: which variants export each job, by fingerprint (`decide_exports`, `known_sizes`)
- `publish`: tasks.json, the state and the report (`publish_export`), and the state alone
  after an interruption (`record_finished`)
- `housekeeping`: deleting an export of the other layout (`check_layout`), and pruning
  removed tasks' files (`prune`)
"""

from __future__ import annotations

from .decide import decide_exports, known_sizes
from .housekeeping import check_layout, prune
from .locations import check_locations, destination_lease
from .plan import check_filters, plan_jobs, prepare_run, select_tasks
from .publish import publish_export, record_finished

__all__ = [
    "check_filters",
    "check_layout",
    "check_locations",
    "decide_exports",
    "destination_lease",
    "known_sizes",
    "plan_jobs",
    "prepare_run",
    "prune",
    "publish_export",
    "record_finished",
    "select_tasks",
]
