"""Train the default task once with the paper's model and once without each of its pieces (model.ablate), plus the
two training-level ablations (no warmup, no label smoothing); write the table of docs/ablations.md and the figure
docs/figures/ablations.png of their training-loss curves.

    python docs/run_ablations.py            # about 5 minutes on 2 CPU cores; runs go to multirun/ablations/
    python docs/run_ablations.py --steps 100 --out /tmp/ablations   # a quick look (the docs are not touched)

Each run is `python transformer_playground.py <overrides>`, run in this process one after another.
"""

import argparse
import contextlib
import io
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ABLATIONS = [  # (name, overrides)
    ("none (the paper's model)", []),
    ("causal_mask", ["model.ablate=[causal_mask]"]),
    ("attention_scale", ["model.ablate=[attention_scale]"]),
    ("padding_mask", ["model.ablate=[padding_mask]"]),
    ("residual", ["model.ablate=[residual]"]),
    ("layer_norm", ["model.ablate=[layer_norm]"]),
    ("embedding_scale", ["model.ablate=[embedding_scale]"]),
    ("positional", ["model.ablate=[positional]"]),
    ("warmup", ["scheduler.warmup_steps=0"]),
    ("label smoothing", ["trainer.label_smoothing=0"]),
]
BEGIN, END = "<!-- ablation table: written by docs/run_ablations.py -->", "<!-- end of the ablation table -->"


def train(overrides, run_dir: Path) -> tuple:
    """One run of the default experiment with these overrides: (metrics.json's content, wall seconds)."""
    import playground

    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        flat, _ = playground.run(overrides, run_dir)
    return flat, time.perf_counter() - start


def curve(run_dir: Path, tag="train/loss"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir)).Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def symptom(flat: dict) -> str:
    """What the run shows, in words: the run doctor's signatures, or how well it learned."""
    if flat["doctor"]:
        return "doctor: " + flat["doctor"]
    exact = flat["test/exact_match"]
    return "learns the task" if exact >= 0.95 else "learns part of the task" if exact >= 0.5 else "fails the task"


def figure(runs: dict, path: Path) -> None:
    """Two panels: every run's training loss, and its best head's alignment accuracy (valid/attention_alignment)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, tag, label in ((axes[0], "train/loss", "train/loss (label-smoothed, mean of 50 steps)"),
                           (axes[1], "valid/attention_alignment", "best head's alignment accuracy (valid)")):
        for name, run_dir in runs.items():
            points = curve(run_dir, tag)
            if points:
                paper = name.startswith("none")
                ax.plot(*zip(*points), label=name, linewidth=2.5 if paper else 1.2, color="black" if paper else None,
                        marker=None if tag.startswith("train") else "o", markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle("The default task without each piece of the Transformer (docs/run_ablations.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="trainer.max_steps (default: the default run's)")
    parser.add_argument("--out", default=str(ROOT / "multirun" / "ablations"), help="where the runs go")
    parser.add_argument("--figure-only", action="store_true", help="redraw the figure from the runs in --out")
    args = parser.parse_args(argv)
    out = Path(args.out)
    runs = {name: out / name.split(" ")[0] for name, _ in ABLATIONS}
    if args.figure_only:
        missing = [str(run_dir) for run_dir in runs.values() if not (run_dir / "metrics.json").exists()]
        if missing:
            more = f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""
            rerun = "" if args.out == parser.get_default("out") else f" --out {args.out}"
            parser.error(f"--figure-only draws finished runs, and {missing[0]} holds none{more}: "
                         f"run python docs/run_ablations.py{rerun} first")
        return figure(runs, ROOT / "docs" / "figures" / "ablations.png")
    logging.disable(logging.WARNING)  # the doctor's warnings are in each run's metrics.json
    extra = [f"trainer.max_steps={args.steps}"] if args.steps else []
    rows = ["| ablated | overrides | test exact match | test token accuracy | best valid loss | attention alignment "
            "| what it shows | wall time |", "|---|---|---|---|---|---|---|---|"]
    for name, overrides in ABLATIONS:
        flat, seconds = train(overrides + extra, runs[name])
        command = " ".join(f"`{o}`" for o in overrides) or "(none)"
        rows.append(f"| {name} | {command} | {flat['test/exact_match']:.3f} | {flat['test/token_accuracy']:.3f} | "
                    f"{flat['valid/loss']:.3f} | {flat.get('valid/attention_alignment', float('nan')):.3f} | "
                    f"{symptom(flat)} | {seconds:.0f} s |")
        print(rows[-1], flush=True)
    threads = os.environ.get("OMP_NUM_THREADS") or os.cpu_count()
    table = "\n".join(rows) + (f"\n\nMeasured by `python docs/run_ablations.py` on {cpu_name()} ({threads} threads), "
                               f"one run after another; 'best valid loss' and 'attention alignment' are those of "
                               f"the evaluation best.pt was chosen at.")
    print("\n" + table)
    if args.steps or args.out != parser.get_default("out"):
        return  # a quick look: the docs keep the full runs' figures
    figure(runs, ROOT / "docs" / "figures" / "ablations.png")
    doc = ROOT / "docs" / "ablations.md"
    text = doc.read_text()
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    doc.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


if __name__ == "__main__":
    main()
