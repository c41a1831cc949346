"""The sweep summary: when a multirun ends, one table of every job's overrides and final metrics.

Registered as a Hydra callback in configs/config.yaml; it writes summary.csv and summary.md into the
sweep directory and prints the table, best job first by the runs' trainer.monitor (in its direction), or by
`sort_by` where one is given.
"""

import csv
import json
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf


def collect(sweep_dir: Path):
    """[(job directory name, {override key: value}, {metric: value})] for each finished job under sweep_dir."""
    jobs = []
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json")):
        job = metrics_file.parent
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.load(overrides_file) if overrides_file.exists() else []
        pairs = dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith("hydra."))
        jobs.append((job.name, pairs, json.loads(metrics_file.read_text())))
    return jobs


def summarize(sweep_dir, sort_by=None, mode="max"):
    """Write summary.csv and summary.md into sweep_dir and return the markdown table ('' if no job finished).

    Rows are sorted best first by `sort_by` in direction `mode`; without sort_by, by the monitor the runs
    recorded in metrics.json (valid/exact_match, max, for runs written before trainer.monitor)."""
    sweep_dir = Path(sweep_dir)
    jobs = collect(sweep_dir)
    if not jobs:
        return ""
    if sort_by is None:
        sort_by, mode = jobs[0][2].get("monitor", "valid/exact_match"), jobs[0][2].get("monitor_mode", "max")
    sign = -1 if mode == "max" else 1
    jobs.sort(key=lambda j: sign * j[2][sort_by] if _number(j[2].get(sort_by)) else float("inf"))
    keys = sorted({k for _, overrides, _ in jobs for k in overrides})
    metrics = sorted({m for _, _, values in jobs for m, v in values.items() if _number(v)},
                     key=lambda m: (m != sort_by, m))
    header = ["job", *keys, *metrics]
    rows = [[name, *(o.get(k, "") for k in keys), *(_fmt(v.get(m, "")) for m in metrics)] for name, o, v in jobs]
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                       *("| " + " | ".join(map(str, row)) + " |" for row in rows)])
    table = f"sorted by {sort_by} ({mode})\n\n" + table
    (sweep_dir / "summary.md").write_text(table + "\n")
    return table


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN


def _fmt(value):
    return f"{value:.4f}" if isinstance(value, float) else value


class SweepSummary(Callback):
    """Hydra callback: summarise the sweep directory when a multirun ends."""

    def __init__(self, sort_by: str = None, mode: str = "max"):
        self.sort_by, self.mode = sort_by, mode

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = summarize(sweep_dir, self.sort_by, self.mode)
        if table:
            print(f"\nsweep summary ({sweep_dir / 'summary.md'}):\n{table}")
