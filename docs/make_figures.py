"""Draw the figures of docs/architecture.md from this project's own code and runs.

    python docs/make_figures.py                 # trains the default experiment and a short heads sweep, kept in
                                                # outputs/figures-default and multirun/figures-heads (reused
                                                # until playground/model/ is edited)
    python docs/make_figures.py --run outputs/2026-11-25/12-00-00 --sweep multirun/figures

Writes docs/figures/{positional_encoding,warmup_schedule,attention_reverse,heads_sweep_loss}.png.
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playground.inference import load_trained  # noqa: E402
from playground.data import load_data  # noqa: E402
from playground.model.embeddings import sinusoid_table  # noqa: E402
from playground.config import TrainerConfig  # noqa: E402
from playground.setup import SCHEDULES, auto_warmup  # noqa: E402

FIGURES = ROOT / "docs" / "figures"
MODEL_CODE = ROOT / "playground" / "model"


def still_current(record: Path, code: Path = MODEL_CODE) -> bool:
    """Whether a kept run (its file `record`) was trained after the last edit of the model's code: a learner's edit
    to playground/model/ must show in the figures, so an older run is trained again."""
    return record.exists() and all(f.stat().st_mtime <= record.stat().st_mtime for f in code.rglob("*.py"))


def positional_encoding():
    table = sinusoid_table(64, 128)
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    image = ax.imshow(table.T, cmap="RdBu", aspect="auto", vmin=-1, vmax=1)
    ax.set(xlabel="position", ylabel="dimension", title="Sinusoidal positional encoding (d_model = 128)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(FIGURES / "positional_encoding.png")


def warmup_schedule():
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=110)
    steps = range(1, 20001)
    axes[0].plot(steps, [7e-4 * SCHEDULES["noam"](s, 4000, 20000, 0.0) for s in steps])
    axes[0].set(title="noam: the paper's base model (warmup 4000)", xlabel="step", ylabel="learning rate")
    total = TrainerConfig().max_steps
    warmup = auto_warmup(total)
    steps = range(1, total + 1)
    axes[1].plot(steps, [2e-3 * SCHEDULES["cosine"](s, warmup, total, 0.0) for s in steps], color="tab:orange")
    axes[1].set(title=f"cosine: the default experiment (warmup {warmup})", xlabel="step")
    fig.tight_layout()
    fig.savefig(FIGURES / "warmup_schedule.png")


def attention_reverse(run_dir: Path):
    ckpt = run_dir / "checkpoints" / "best.pt"
    model, saved, src_tok, tgt_tok, _ = load_trained(ckpt)
    model.eval()
    data = load_data(saved.dataset)
    valid = data.splits["valid"]
    row = int(torch.argmax(valid.src_lengths))  # the longest example shows the anti-diagonal best
    src, tgt = valid.batch(torch.tensor([row]))
    name = f"decoder.layers.{len(model.decoder.layers) - 1}.cross_attn"
    weights = model.attention_maps(src, tgt[:, :-1])[name][0]  # (H, T, S)
    keys = [src_tok.piece(i) for i in src[0].tolist()]
    queries = [tgt_tok.piece(i) for i in tgt[0, :-1].tolist()]
    fig, axes = plt.subplots(1, weights.shape[0], figsize=(3 * weights.shape[0], 3.4), dpi=110)
    for h, ax in enumerate(axes):
        ax.imshow(weights[h], cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(keys)), keys, fontsize=7)
        ax.set_yticks(range(len(queries)), queries if h == 0 else [""] * len(queries), fontsize=7)
        ax.set(title=f"head {h}", xlabel="source (keys)")
    axes[0].set_ylabel("decoder input (queries)")
    fig.suptitle(f"Cross-attention, last decoder layer, reversing a sequence ({name})", fontsize=9)
    fig.tight_layout()
    fig.savefig(FIGURES / "attention_reverse.png")


def heads_sweep_loss(sweep_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=110)
    for job in sorted(p for p in sweep_dir.iterdir() if (p / "metrics.json").exists()):
        events = EventAccumulator(str(job)).Reload()
        label = job.name.split("_", 1)[1].split(",")[0]
        loss = events.Scalars("train/loss")
        axes[0].plot([e.step for e in loss], [e.value for e in loss], label=label)
        exact = events.Scalars("valid/exact_match")
        axes[1].plot([e.step for e in exact], [e.value for e in exact], marker="o", label=label)
    axes[0].set(title="train/loss", xlabel="step", ylim=(0.55, 2.0))
    axes[1].set(title="valid/exact_match", xlabel="step")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGURES / "heads_sweep_loss.png")


def train(args):
    subprocess.run([sys.executable, str(ROOT / "transformer_playground.py"), *args], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a trained default run directory (default: train one)")
    parser.add_argument("--sweep", type=Path, help="a heads sweep directory (default: run one)")
    args = parser.parse_args()
    FIGURES.mkdir(parents=True, exist_ok=True)
    positional_encoding()
    warmup_schedule()
    run_dir = args.run or ROOT / "outputs" / "figures-default"
    if args.run is None and not still_current(run_dir / "checkpoints" / "best.pt"):
        shutil.rmtree(run_dir, ignore_errors=True)  # this script's own run, from before the model's last edit
        train([f"hydra.run.dir={run_dir}"])
    attention_reverse(run_dir)
    sweep_dir = args.sweep or ROOT / "multirun" / "figures-heads"
    if args.sweep is None and not still_current(sweep_dir / "summary.md"):
        shutil.rmtree(sweep_dir, ignore_errors=True)
        train(["-m", "model.heads=1,2,4,8", "trainer.max_steps=600", "trainer.eval_every=100",
               f"hydra.sweep.dir={sweep_dir}"])
    heads_sweep_loss(sweep_dir)
    print(f"figures written to {FIGURES}")


if __name__ == "__main__":
    main()
