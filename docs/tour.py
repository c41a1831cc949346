# %% [markdown]
# # A tour of Transformer Playground from Python
#
# This file is a notebook in jupytext's "percent" format: open it in Jupyter (with jupytext) or VS Code and run
# it cell by cell, or run it whole as a script: `python docs/tour.py` (about a minute on a laptop CPU).
# It trains the default model, translates with it, looks at its attention, removes a piece of the model and
# compares the two runs. Everything it uses is the public API of `playground/api.py`.

# %%
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]) if "__file__" in globals() else "..")

import matplotlib

if "__file__" in globals():  # run as a script: draw into files rather than windows
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

import playground

EXTRA = os.environ.get("TOUR_OVERRIDES", "").split()  # the tests run the tour shorter (tests/test_diagnostics.py)
work = Path(tempfile.mkdtemp(prefix="playground-tour-"))

# %% [markdown]
# ## Train the default experiment
#
# `playground.run` takes the same overrides as the command line. The default task is to reverse a sequence
# of 1-10 symbols; the tiny model learns it in a few hundred steps.

# %%
metrics, run_dir = playground.run(["trainer.max_steps=300", "trainer.eval_every=100", "trainer.progress=off", *EXTRA],
                                  work / "paper")
print(f"test exact match {metrics['test/exact_match']:.3f}, attention alignment "
      f"{metrics.get('valid/attention_alignment', float('nan')):.3f}; the run is in {run_dir}")

# %% [markdown]
# ## Translate, with greedy decoding and with a beam

# %%
trained = playground.load(run_dir / "checkpoints" / "best.pt")
print(trained.translate(["3 1 4 1 5", "9 2 6"]))
for score, text in trained.translate(["3 1 4 1 5"], beam_size=4, nbest=3)[0]:
    print(f"{score:8.3f}  {text}")
print("log-probability and NLL per token of the right answer:", trained.score(["3 1 4 1 5"], ["5 1 4 1 3"]))

# %% [markdown]
# ## Look at the attention
#
# The last decoder layer's cross-attention, for one pair: output position t (down) against source position
# (across). A head that has learned to reverse draws the anti-diagonal.

# %%
maps = trained.attention("3 1 4 1 5", "5 1 4 1 3")
cross = maps["decoder.layers.1.cross_attn"]  # (heads, target positions, source positions)
fig, axes = plt.subplots(1, cross.size(0), figsize=(3 * cross.size(0), 3))
for head, ax in enumerate(axes):
    ax.imshow(cross[head].float().cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
    ax.set_title(f"head {head}")
    ax.set_xlabel("source position")
axes[0].set_ylabel("output position")
fig.tight_layout()
if "__file__" in globals():
    fig.savefig(work / "cross_attention.png")
else:
    plt.show()

# %% [markdown]
# ## Take a piece away
#
# Without positional encodings the encoder sees a bag of symbols: it knows which symbols the source holds but
# not in which order, so it cannot reverse them (docs/ablations.md has every ablation).

# %%
ablated, ablated_dir = playground.run(["trainer.max_steps=300", "trainer.eval_every=100", "trainer.progress=off",
                                       "model.ablate=[positional]", *EXTRA], work / "no_positions")

# %% [markdown]
# ## Compare the two runs

# %%
for key in ("test/exact_match", "test/token_accuracy", "test/loss", "valid/attention_alignment"):
    print(f"{key:28} {metrics.get(key, float('nan')):8.3f} {ablated.get(key, float('nan')):8.3f}")
print(f"\nBoth runs are TensorBoard runs: tensorboard --logdir {work}")
