"""Table 3 of the paper in miniature: every row of configs/table3_row/ trained over seeds 1, 2 and 3 on the made-up
translation task of configs/experiment/table3.yaml; writes the table of docs/table3.md (our deltas against the
base row, with their noise, beside the paper's) and the figure docs/figures/table3.png.

    python docs/run_table3.py                 # 9 rows x 3 seeds, two runs at a time: about 35 minutes on 2 cores
    python docs/run_table3.py --seeds 1 2 --steps 50 --out /tmp/table3    # a quick look (the docs are not touched)

Each run is `python transformer_playground.py experiment=table3 table3_row=ROW seed=S`, one thread each, --jobs at
a time; a run whose metrics.json is there already is not run again (so an interrupted suite continues), and one
made with other overrides (a quick look's --steps) stops the suite, naming its folder.
"""

import argparse
import concurrent.futures
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playground.sweep import within_noise  # noqa: E402

# (row file, what changes here, the paper's row, its dev-set perplexity and BLEU, from Table 3)
ROWS = [
    ("base", "d_model 128, 4 heads of d_k 32, N=2, d_ff 512, P_drop 0.1, ε_ls 0.1", "base", 4.92, 25.8),
    ("A_1_head", "1 head of d_k 128", "(A) h=1, d_k=512", 5.29, 24.9),
    ("A_16_heads", "16 heads of d_k 8", "(A) h=32, d_k=16", 5.01, 25.4),
    ("B_key_dim_16", "d_k 16 (d_v 32)", "(B) d_k=32", 5.01, 25.4),
    ("C_1_layer", "N=1", "(C) N=2", 6.11, 23.7),
    ("C_d_model_64", "d_model 64, d_ff 256", "(C) d_model=256, d_k=32", 5.75, 24.5),
    ("D_no_dropout", "P_drop 0.0", "(D) P_drop=0.0", 5.77, 24.6),
    ("D_no_label_smoothing", "ε_ls 0.0", "(D) ε_ls=0.0", 4.67, 25.3),
    ("E_learned_positions", "learned positions", "(E) positional embedding", 4.92, 25.7),
]
METRICS = ("test/bleu", "test/ppl")
CORPUS = ["--pairs", "20000", "--held-out", "500", "--vocabulary", "2000", "--median-words", "6"]
BEGIN, END = "<!-- table 3: written by docs/run_table3.py -->", "<!-- end of table 3 -->"


def run(row: str, seed: int, out: Path, extra: list, threads: int) -> dict:
    """One run (skipped when its metrics.json exists, from the same overrides): metrics.json's content, with its wall
    seconds."""
    run_dir = out / row / f"seed_{seed}"
    overrides = ["experiment=table3", f"table3_row={row}", f"seed={seed}", "trainer.progress=off", *extra]
    if (run_dir / "metrics.json").exists():  # reused only if it is this run: not one of another --steps, say
        recorded = run_dir / ".hydra" / "overrides.yaml"
        earlier = yaml.safe_load(recorded.read_text()) if recorded.exists() else None
        if earlier != overrides:
            sys.exit(f"{run_dir} holds a run of {' '.join(earlier or ['unknown overrides'])}, not of "
                     f"{' '.join(overrides)}: move it away or give another --out")
    else:
        started = time.perf_counter()
        command = [sys.executable, str(ROOT / "transformer_playground.py"), *overrides, f"hydra.run.dir={run_dir}"]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        if result.returncode != 0:
            sys.exit(f"{row} seed {seed} failed:\n{result.stderr[-3000:]}")
        (run_dir / "wall_seconds").write_text(f"{time.perf_counter() - started:.1f}\n")
    flat = json.loads((run_dir / "metrics.json").read_text())
    flat["wall_seconds"] = float((run_dir / "wall_seconds").read_text()) if (run_dir / "wall_seconds").exists() \
        else float("nan")
    return flat


def stats(values) -> tuple:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else float("nan"), len(values)


def delta(row: tuple, base: tuple) -> tuple:
    """(row mean - base mean, twice its standard error, 'within' or 'beyond' the noise)."""
    error = 2 * math.sqrt(row[1] ** 2 / row[2] + base[1] ** 2 / base[2])
    return row[0] - base[0], error, "within" if within_noise(row, base) else "beyond"


def table(results: dict, seeds, seconds: float, jobs: int) -> str:
    base = {m: stats([r[m] for r in results["base"]]) for m in METRICS}
    lines = ["| row | our change | test BLEU | ΔBLEU | test PPL | ΔPPL | the paper's row | paper ΔBLEU | paper ΔPPL |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row, change, paper_row, paper_ppl, paper_bleu in ROWS:
        own = {m: stats([r[m] for r in results[row]]) for m in METRICS}
        cells = []
        for metric in METRICS:
            mean, sd, _ = own[metric]
            cells.append(f"{mean:.2f} ± {sd:.2f}")
            if row == "base":
                cells.append("")
            else:
                d, error, mark = delta(own[metric], base[metric])
                cells.append(f"{d:+.2f} ± {error:.2f} ({mark})" if mark == "within" else
                             f"**{d:+.2f} ± {error:.2f} (beyond)**")
        paper = ("", "") if row == "base" else (f"{paper_bleu - 25.8:+.1f}", f"{paper_ppl - 4.92:+.2f}")
        lines.append(f"| {row} | {change} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {paper_row} | "
                     f"{paper[0]} | {paper[1]} |")
    runs = sum(len(r) for r in results.values())
    walls = [r["wall_seconds"] for rs in results.values() for r in rs if not math.isnan(r["wall_seconds"])]
    return "\n".join(lines) + (
        f"\n\nMean ± sample standard deviation over seeds {', '.join(map(str, seeds))}; a Δ is the row's mean minus "
        f"the base row's, ± twice its standard error, and **beyond** the noise when |Δ| is larger than that "
        f"(`playground.sweep.within_noise`). The paper's deltas are its Table 3 against its base row (newstest2013, "
        f"PPL 4.92, BLEU 25.8). {runs} runs, {jobs} at a time, {seconds / 60:.0f} minutes in all "
        f"({statistics.mean(walls) / 60:.1f} minutes a run on one thread) on {cpu_name()}.")


def figure(results: dict, path: Path) -> None:
    """Two panels, ΔBLEU and ΔPPL against the base row: ours with twice the standard error, the paper's as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in ROWS if r[0] != "base"]
    base = {m: stats([r[m] for r in results["base"]]) for m in METRICS}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, metric, paper_index, paper_base in ((axes[0], "test/bleu", 4, 25.8), (axes[1], "test/ppl", 3, 4.92)):
        deltas = [delta(stats([r[metric] for r in results[row[0]]]), base[metric]) for row in rows]
        y = range(len(rows))
        colors = ["tab:red" if mark == "beyond" else "tab:gray" for _, _, mark in deltas]
        ax.barh(y, [d for d, _, _ in deltas], xerr=[e for _, e, _ in deltas], color=colors, alpha=0.8,
                capsize=3, label="ours (red: beyond the noise)")
        ax.scatter([row[paper_index] - paper_base for row in rows], y, color="black", marker="D", zorder=3,
                   label="the paper (Table 3)")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel(f"Δ {metric} against the base row")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), [f"{row[0]}: {row[1]}" for row in rows], fontsize=8)
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Table 3 in miniature: each row's change against the base row (docs/run_table3.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    return "an unknown CPU"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=None, help="trainer.max_steps (default: the preset's 500)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--out", default=str(ROOT / "multirun" / "table3"), help="where the runs go")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not (ROOT / "data" / "table3" / "train.tsv").exists():
        subprocess.run([sys.executable, "-m", "playground.data.big_corpus", "data/table3", *CORPUS], cwd=ROOT,
                       check=True)
    extra = [f"trainer.max_steps={args.steps}", f"trainer.eval_every={args.steps}"] if args.steps else []
    started = time.perf_counter()
    jobs = [(row, seed) for row, *_ in ROWS for seed in args.seeds]
    results = {row: [] for row, *_ in ROWS}
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run, row, seed, out, extra, 1 if args.jobs > 1 else os.cpu_count()): (row, seed)
                   for row, seed in jobs}
        for future in concurrent.futures.as_completed(futures):
            row, seed = futures[future]
            flat = future.result()
            results[row].append(flat)
            print(f"{row} seed {seed}: test BLEU {flat['test/bleu']:.2f}, PPL {flat['test/ppl']:.2f} "
                  f"({flat['wall_seconds']:.0f} s)", flush=True)
    text = table(results, args.seeds, time.perf_counter() - started, args.jobs)
    print("\n" + text)
    if args.steps or args.out != parser.get_default("out") or args.seeds != parser.get_default("seeds"):
        return  # a quick look: the docs keep the full suite's figures
    figure(results, ROOT / "docs" / "figures" / "table3.png")
    doc = ROOT / "docs" / "table3.md"
    head, rest = doc.read_text().split(BEGIN)
    _, tail = rest.split(END)
    doc.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    main()
