"""Benchmark (not a test): translate throughput for a 1,000-line file, in batches of similar length against one
line at a time, greedy and with a beam of 4. What mode=translate input_file=... does, without the start-up.

    python -m playground.bench_translate                    # trains the default experiment for 300 steps first
    python -m playground.bench --only translate             # the same
    python -m playground.bench_translate --ckpt outputs/<date>/<time>/checkpoints/best.pt --input FILE

Without --input, the lines are the default task's: 1 to 10 symbols of 16, as "3 1 4". Prints sentences per
second, the best of --rounds timings of each.
"""

import argparse
import contextlib
import io
import random
import tempfile
import time
from pathlib import Path

import torch

from .config import DecodeConfig, compose_config
from .errors import UserError
from .inference import Encoder, model_from_checkpoint, translate
from .perf import bench_device, synchronize
from .setup import autocast_for, resolve_device, resolve_precision

def train_default(folder: Path, device: str) -> Path:
    """The default experiment, 300 steps, its output kept out of the way: returns its best.pt."""
    from .experiment import run_train

    cfg = compose_config(["trainer.max_steps=300", "trainer.eval_every=300", f"trainer.device={device}"])
    print("training the default experiment for 300 steps ...", flush=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        flat = run_train(cfg, folder)
    print(f"test exact match {flat['test/exact_match']:.3f}")
    return folder / "checkpoints" / "best.pt"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="a checkpoint (default: train the default experiment for 300 steps)")
    parser.add_argument("--input", help="one input a line (default: 1,000 lines of the default task)")
    parser.add_argument("--lines", type=int, default=1000, help="how many lines to translate")
    parser.add_argument("--batch-size", type=int, default=64, help="decode.batch_size of the batched runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="trainer.precision of the translation (auto: bf16 where the CPU or GPU computes it)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    bench_device(parser, args.device)
    for option in ("lines", "batch_size", "rounds"):  # checked before the minutes of training the default model
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} {getattr(args, option)}: at least 1")
    if args.input and not Path(args.input).is_file():
        parser.error(f"--input {args.input}: no such file")
    if args.input:
        try:
            lines = Path(args.input).read_text(encoding="utf-8").splitlines()[: args.lines]
        except UnicodeDecodeError as e:
            parser.error(f"--input {args.input}: not UTF-8 text ({e.reason} at byte {e.start})")
        if not any(line.strip() for line in lines):
            parser.error(f"--input {args.input}: no line to translate (the file is empty or blank)")
    else:
        rng = random.Random(0)
        lines = [" ".join(str(rng.randrange(16)) for _ in range(rng.randint(1, 10))) for _ in range(args.lines)]
    with tempfile.TemporaryDirectory() as scratch:
        try:  # a missing or mismatched checkpoint, bf16 on a CPU without it: the project's one line, exit 2
            device = resolve_device(args.device)
            precision = resolve_precision(device, args.precision)
            autocast = autocast_for(device, precision)  # fp16 off a GPU is refused here, before any training
            ckpt = args.ckpt or train_default(Path(scratch), args.device)
            cfg = compose_config(["mode=translate", f"ckpt_path={ckpt}", f"trainer.device={args.device}",
                                  f"trainer.precision={args.precision}"])
            model, _, src_tok, tgt_tok, _ = model_from_checkpoint(cfg)
        except UserError as error:
            parser.error(str(error))
        model.to(device).eval()
    inputs = Encoder(src_tok, model.max_len)(lines)
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {precision}; {len(lines)} lines, {sum(map(len, inputs))} tokens")
    rows = [["decoding", "one line at a time", f"batches of {args.batch_size}", "ratio"]]
    for name, decode in (("greedy", {}), ("beam 4", {"beam_size": 4})):
        speeds = []
        for batch_size in (1, args.batch_size):
            d = DecodeConfig(**decode, batch_size=batch_size)
            best = float("inf")
            for _ in range(args.rounds):
                start = time.perf_counter()
                translate(model, inputs, tgt_tok, d, device, autocast)
                synchronize(device)
                best = min(best, time.perf_counter() - start)
            speeds.append(len(lines) / best)
        rows.append([name, f"{speeds[0]:,.0f} sentences/s", f"{speeds[1]:,.0f} sentences/s",
                     f"{speeds[1] / speeds[0]:.1f}x"])
    from .bench import print_table

    print()
    print_table(rows)


if __name__ == "__main__":
    main()
