"""The sweep summary: when a multirun ends, one table of every job's overrides and final metrics.

Registered as a Hydra callback in configs/config.yaml; it writes summary.csv and summary.md into the
sweep directory and prints the table, best job first by `sort_by`.
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


def summarize(sweep_dir, sort_by="test/exact_match"):
    """Write summary.csv and summary.md into sweep_dir and return the markdown table ('' if no job finished)."""
    sweep_dir = Path(sweep_dir)
    jobs = collect(sweep_dir)
    if not jobs:
        return ""
    jobs.sort(key=lambda j: -j[2].get(sort_by, float("-inf")))
    keys = sorted({k for _, overrides, _ in jobs for k in overrides})
    metrics = sorted({m for _, _, values in jobs for m in values}, key=lambda m: (m != sort_by, m))
    header = ["job", *keys, *metrics]
    rows = [[name, *(o.get(k, "") for k in keys), *(_fmt(v.get(m, "")) for m in metrics)] for name, o, v in jobs]
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                       *("| " + " | ".join(map(str, row)) + " |" for row in rows)])
    (sweep_dir / "summary.md").write_text(table + "\n")
    return table


def _fmt(value):
    return f"{value:.4f}" if isinstance(value, float) else value


class SweepSummary(Callback):
    """Hydra callback: summarise the sweep directory when a multirun ends."""

    def __init__(self, sort_by: str = "test/exact_match"):
        self.sort_by = sort_by

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = summarize(sweep_dir, self.sort_by)
        if table:
            print(f"\nsweep summary ({sweep_dir / 'summary.md'}):\n{table}")
