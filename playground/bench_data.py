"""How the data side scales: preprocessing, start-up and memory of one training process on a large corpus.

    python -m playground.bench_data                          # 100k and 1M pairs (about 10 minutes on 2 cores)
    python -m playground.bench_data --pairs 20000 --steps 5  # a quick look

For each size it writes a synthetic corpus (data/big_corpus.py; kept in --folder for the next time), removes
its token cache, then trains model=small twice for --steps steps, each run a new process as a user starts it,
with batches of at most 2,048 tokens (trainer.max_tokens: batches cut from the lengths), and 200 valid and test
pairs evaluated 100 at a time (evaluation is not what is measured):
- the first run tokenises the corpus into the cache: its preprocessing time is what the log reports;
- the second run reads the cache: its time to the first training step is measured from the outside, from the
  start of the process to the log line of step 1;
and for each, the peak resident memory of the process (its ru_maxrss: memory-mapped pages it touched count).
"""

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .data.big_corpus import write_corpus
from .data.cache import FOLDER

HELD_OUT = 200  # valid and test pairs
ENTRY = Path(__file__).resolve().parents[1] / "transformer_playground.py"


def run_once(paths: dict, steps: int, run_dir: Path, extra=()) -> dict:
    """Train model=small on the corpus for `steps` steps in a new process: seconds to the first step, in all,
    the cache line of the log, and the peak resident memory in MB."""
    command = [sys.executable, str(ENTRY), "dataset=text_pairs", f"dataset.train_file={paths['train']}",
               f"dataset.valid_file={paths['valid']}", f"dataset.test_file={paths['test']}", "model=small",
               f"trainer.max_steps={steps}", "trainer.progress=log", "trainer.log_every=1",
               f"trainer.eval_every={steps}", "trainer.max_tokens=2048", "trainer.eval_batch_size=100", f"hydra.run.dir={run_dir}", *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    first_step, cache_line, lines = None, "", []
    for line in process.stdout:
        lines.append(line)
        if first_step is None and re.search(r"step 1/\d+:", line):
            first_step = time.perf_counter() - started
        if "dataset cache:" in line:
            cache_line = line.split("dataset cache: ", 1)[1].strip()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0 or first_step is None:
        sys.exit("the run failed:\n" + "".join(lines[-30:]))
    peak = usage.ru_maxrss / (1024 if sys.platform != "darwin" else 1024 * 1024)  # KB on Linux, bytes on macOS
    return {"first_step_s": first_step, "total_s": time.perf_counter() - started, "cache": cache_line,
            "peak_mb": peak}


def measure(pairs: int, folder: Path, steps: int) -> dict:
    corpus = folder / f"pairs_{pairs}"
    paths = {split: corpus / f"{split}.tsv" for split in ("train", "valid", "test")}
    if not all(p.is_file() for p in paths.values()):
        started = time.perf_counter()
        write_corpus(corpus, pairs, held_out=HELD_OUT)
        print(f"  wrote the {pairs:,}-pair corpus in {time.perf_counter() - started:.0f} s", flush=True)
    shutil.rmtree(corpus / FOLDER, ignore_errors=True)
    with tempfile.TemporaryDirectory() as runs:
        first = run_once(paths, steps, Path(runs) / "first")
        second = run_once(paths, steps, Path(runs) / "second")
    built = re.search(r"\(([\d,.]+) MB, ([\d.]+) s\)", first["cache"])
    return {"pairs": pairs, "megabytes": paths["train"].stat().st_size / 1e6, "first": first, "second": second,
            "cache_mb": float(built.group(1).replace(",", "")) if built else float("nan"),
            "preprocess_s": float(built.group(2)) if built else float("nan")}


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.*)", info).group(1)
        flags = set(re.search(r"flags\s*:\s*(.*)", info).group(1).split())
        model += " (" + ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags) + ")"
    except (OSError, AttributeError):
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main(argv=None):
    parser = argparse.ArgumentParser(description="Measure the data side at scale: preprocessing, start-up, memory.")
    parser.add_argument("--pairs", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--folder", type=Path, default=Path("data/bench"), help="where the corpora are kept")
    parser.add_argument("--steps", type=int, default=20, help="training steps of each run")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    results = []
    for pairs in args.pairs:
        print(f"{pairs:,} pairs:", flush=True)
        results.append(measure(pairs, args.folder, args.steps))
        r = results[-1]
        print(f"  first run: {r['first']['cache']}; peak {r['first']['peak_mb']:,.0f} MB", flush=True)
        print(f"  second run: first step after {r['second']['first_step_s']:.1f} s; peak {r['second']['peak_mb']:,.0f} MB",
              flush=True)
    print()
    print("| training pairs | corpus | cache | first run: preprocessing | first run: to step 1 | first run: peak RSS "
          "| second run: to step 1 | second run: peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['pairs']:,} | {r['megabytes']:,.0f} MB | {r['cache_mb']:,.0f} MB | {r['preprocess_s']:.1f} s "
              f"| {r['first']['first_step_s']:.1f} s | {r['first']['peak_mb']:,.0f} MB "
              f"| {r['second']['first_step_s']:.1f} s | {r['second']['peak_mb']:,.0f} MB |")
    if len(results) > 1:
        growth = results[-1]["second"]["peak_mb"] / results[0]["second"]["peak_mb"]
        print(f"\npeak RSS of the second run grows {growth:.2f}x from {results[0]['pairs']:,} to "
              f"{results[-1]['pairs']:,} pairs")


if __name__ == "__main__":
    main()
