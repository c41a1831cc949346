"""The sweep summary: when a multirun ends, one table of every job's overrides and final metrics.

Registered as a Hydra callback in configs/config.yaml; it writes summary.csv and summary.md into the
sweep directory and prints the table, best job first by the runs' trainer.monitor (in its direction), or by
`sort_by` where one is given. A sweep over seeds (-m seed=1,2,3 model.heads=1,2,4) also gets one row per
configuration, its metrics as mean ± sd over the seeds, marked within or beyond the noise of the best
configuration (summary.md, the printout, and summary_by_config.csv).
"""

import csv
import json
import math
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf


FAILED = "failed.txt"  # in a sweep job's directory: the one-line reason the job was refused


def refusals(sweep_dir) -> dict:
    """{failed.txt path: (modification time, size)} of every refused job under sweep_dir."""
    return {path: _stamp(path) for path in Path(sweep_dir).glob(f"*/{FAILED}")}


def _stamp(path: Path) -> tuple:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def failed_jobs(sweep_dir: Path, earlier=None) -> list:
    """[(job directory name, reason)] for each job of the sweep that was refused; with `earlier` (refusals() when the
    sweep started), only those refused since: an earlier sweep into the same folder answered for its own."""
    paths = [f for f in sorted(Path(sweep_dir).glob(f"*/{FAILED}")) if earlier is None or earlier.get(f) != _stamp(f)]
    return [(f.parent.name, f.read_text().strip()) for f in paths]


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
        if not any(_number(j[2].get(sort_by)) for j in jobs) and sort_by.startswith("valid/"):
            sort_by = "test/" + sort_by.removeprefix("valid/")  # mode=eval jobs score the test split only
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
    scored = any(_number(j[2].get(sort_by)) for j in jobs)
    table = (f"sorted by {sort_by} ({mode})" if scored else f"in job order (no job recorded {sort_by})") + "\n\n" + table
    by_config = seed_statistics(jobs, sort_by, mode, metrics)
    if by_config:
        markdown, csv_rows = by_config
        with open(sweep_dir / "summary_by_config.csv", "w", newline="") as f:
            csv.writer(f).writerows(csv_rows)
        table = markdown + "\n\nevery job, " + table
    (sweep_dir / "summary.md").write_text(table + "\n")
    return table


def within_noise(a: tuple, b: tuple) -> bool:
    """Two configurations' (mean, sd, n) are within the noise when |mean_a - mean_b| <= 2 * sqrt(sd_a^2/n_a +
    sd_b^2/n_b): the difference is at most twice its standard error (about a 95% interval). Equal means are within
    it even with no spread at all (every seed at exact match 1.0, say)."""
    (mean_a, sd_a, n_a), (mean_b, sd_b, n_b) = a, b
    return abs(mean_a - mean_b) <= 2 * math.sqrt(sd_a ** 2 / n_a + sd_b ** 2 / n_b)


def seed_statistics(jobs, sort_by: str, mode: str, metrics):
    """Jobs that differ only by `seed` grouped into one configuration each: (markdown, csv rows) with n, each
    metric's mean +- sample standard deviation, and whether the configuration is within the noise of the best one
    by sort_by. None when no configuration ran more than one seed."""
    groups = {}
    for _, overrides, values in jobs:
        config = tuple(sorted((k, v) for k, v in overrides.items() if k != "seed"))
        groups.setdefault(config, []).append(values)
    if all(len(runs) < 2 for runs in groups.values()):
        return None

    def stats(runs, metric):
        values = [r[metric] for r in runs if _number(r.get(metric))]
        if not values:
            return None
        # in plain floats: statistics.stdev fails on an infinite value (a loss that overflowed), where this gives nan
        n = len(values)
        mean = sum(values) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
        return mean, sd, n

    sign = -1 if mode == "max" else 1
    def rank_key(group):
        own = stats(group[1], sort_by)
        return (own is None, sign * own[0] if own else 0.0)  # configurations without the metric last

    ranked = sorted(groups.items(), key=rank_key)
    best = stats(ranked[0][1], sort_by)
    # what every configuration shares (trainer.max_steps=200 in each, test/pairs_scored 1000 in each) is left out
    keys = sorted(k for k in {k for config in groups for k, _ in config} if len({dict(c).get(k) for c in groups}) > 1)
    metrics = [m for m in metrics if m == sort_by or len({r.get(m) for runs in groups.values() for r in runs}) > 1]
    header = [*keys, "n", *metrics, f"{sort_by} against the best"]
    md_rows, csv_rows = [], [[*keys, "n", *(f"{m} {part}" for m in metrics for part in ("mean", "sd")), "noise"]]
    for rank, (config, runs) in enumerate(ranked):
        values = dict(config)
        own = stats(runs, sort_by)
        if rank == 0:
            mark = "best"
        elif own is None or own[2] < 2 or best[2] < 2:
            mark = "n < 2: unknown"
        else:
            mark = "within the noise" if within_noise(own, best) else "beyond the noise"
        cells = [stats(runs, m) for m in metrics]
        md_rows.append([*(values.get(k, "") for k in keys), str(len(runs)),
                        *("" if c is None else f"{c[0]:.4f} ± {c[1]:.4f}" for c in cells), mark])
        csv_rows.append([*(values.get(k, "") for k in keys), len(runs),
                         *(x for c in cells for x in (("", "") if c is None else (c[0], c[1]))), mark])
    markdown = "\n".join([f"configurations over seeds (mean ± sample sd; within the noise of the best: |difference| <= "
                          f"2 sqrt(sd_a²/n_a + sd_b²/n_b)), sorted by {sort_by} ({mode})", "",
                          "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                          *("| " + " | ".join(row) + " |" for row in md_rows)])
    return markdown, csv_rows


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN


def _fmt(value):
    return f"{value:.4f}" if isinstance(value, float) else value


class SweepSummary(Callback):
    """Hydra callback: summarise the sweep directory when a multirun ends."""

    def __init__(self, sort_by: str = None, mode: str = "max"):
        self.sort_by, self.mode = sort_by, mode
        self.earlier = None  # the refused jobs already in the sweep's folder when it started

    def on_multirun_start(self, config, **kwargs) -> None:
        # several sweeps into one folder build one table (docs/run_variants.sh), but each reports, and exits 2
        # for, only the jobs it refused itself
        self.earlier = refusals(config.hydra.sweep.dir)

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = summarize(sweep_dir, self.sort_by, self.mode)
        if table:
            print(f"\nsweep summary ({sweep_dir / 'summary.md'}):\n{table}")
        failed = failed_jobs(sweep_dir, self.earlier)
        if failed:  # the other jobs ran and are summarised; the command still ends as a mistake does
            refused = "refused jobs:\n" + "".join(f"- {name}: {reason}\n" for name, reason in failed)
            with open(sweep_dir / "summary.md", "a" if table else "w") as f:  # below this sweep's table, if any
                f.write(f"\n\n{refused}" if table else refused)
            print(f"error: {len(failed)} job{'s' * (len(failed) != 1)} of the sweep refused: "
                  + "; ".join(f"{name}: {reason}" for name, reason in failed), file=sys.stderr)
            sys.exit(2)
