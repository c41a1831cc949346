"""Fast drop-ins for the reference model's pieces, chosen by trainer.kernels=fast (build_model(..., kernels="fast")).

playground/model/ is the Transformer as the paper writes it, and what trains by default. The files here
compute the same things faster, one file per piece, each a subclass of the reference piece that replaces
only its forward (attention also its decoding cache's append; the Transformer only its decode), so the
weights, their names and checkpoints are the same whichever runs:

| reference piece (playground/model/)      | fast drop-in (playground/kernels/)                           |
|------------------------------------------|--------------------------------------------------------------|
| attention.py: MultiHeadAttention         | attention.py: FastMultiHeadAttention (cpu_attention, SDPA)   |
| layers.py: PositionwiseFeedForward       | feed_forward.py: FusedFeedForward (ReLU, CPU training)       |
| torch.nn.Linear                          | linear.py: OneDNNLinear (fp32, CPU)                          |
| dropout.py: Dropout                      | dropout.py: MaskDropout (random-byte mask, CPU)              |
| loss.py: sequence_loss                   | loss.py: blockwise_sequence_loss                             |
| transformer.py: Transformer (decode)     | transformer.py: FastTransformer (weights packed per decoding)|

Two files serve the others: support.py (the checks below) and memory.py (the output layer's logits and the loss's
gradient reuse the memory of the last step's, where no live tensor shares it: fresh memory costs a page fault
per 4 kB on a CPU).

Each one checks once, on first use, that it computes what the reference piece computes on this machine,
device and dtype (support.py), and where it does not, that piece runs the reference code, with one log
line saying so. A module is swapped only when it is exactly the reference class: a subclass of your own
keeps its code.
"""

import logging

from torch import nn

from ..model import KERNELS
from ..model import loss as model_loss
from ..model.attention import MultiHeadAttention
from ..model.dropout import Dropout
from ..model.embeddings import RotaryPositionalEncoding
from ..model.layers import PositionwiseFeedForward
from ..model.transformer import Transformer
from .attention import FastMultiHeadAttention
from .dropout import MaskDropout
from .feed_forward import FusedFeedForward
from .linear import OneDNNLinear
from .loss import blockwise_sequence_loss
from .support import CHECKS, check_all, works
from .transformer import FastTransformer

log = logging.getLogger("playground.kernels")

FAST_PIECES = {
    MultiHeadAttention: FastMultiHeadAttention,
    PositionwiseFeedForward: FusedFeedForward,
    nn.Linear: OneDNNLinear,
    Dropout: MaskDropout,
    Transformer: FastTransformer,
}


def _unsupported_ablation(module):
    """The setting a fast piece does not compute (an ablation, another d_k), if this module has one: it keeps its
    reference code."""
    if isinstance(module, MultiHeadAttention) and not module.scaled:
        return "model.ablate=[attention_scale]"
    if isinstance(module, MultiHeadAttention) and module.key_dim != module.head_dim:
        return f"model.key_dim={module.key_dim}"
    return None


def use_fast_kernels(model: nn.Module, pieces=None) -> nn.Module:
    """Give every reference piece of `model` (or only those of the classes in `pieces`) its fast forward, in
    place: the fast classes add no parameters or buffers, so changing a module's class keeps its weights, its
    state_dict and anything that points at them. A piece ablated in a way its fast version does not compute
    keeps its reference code, with one log line."""
    kept = set()
    for module in model.modules():
        fast = FAST_PIECES.get(type(module))
        if fast is not None and (pieces is None or type(module) in pieces):
            ablation = _unsupported_ablation(module)
            if ablation is None:
                module.__class__ = fast
            else:
                kept.add((ablation, type(module).__name__))
    for ablation, name in sorted(kept):
        log.info(f"trainer.kernels=fast: {name} runs its reference code under {ablation} "
                 f"(its fast kernel computes the paper's version only)")
    for line in sorted(_cpu_training_fallbacks(model, pieces)):
        log.info(line)
    return model


def _cpu_training_fallbacks(model, pieces) -> set:
    """The settings under which a swapped piece still trains with its reference code on the CPU, one line each
    (the check of each kernel logs its own failures; these are the settings its fast path does not cover)."""
    lines = set()
    for module in model.modules():
        if isinstance(module, RotaryPositionalEncoding) and (pieces is None or MultiHeadAttention in pieces):
            lines.add("trainer.kernels=fast: attention trains on the CPU with its reference code under "
                      "model.positional=rotary (the CPU attention kernel does not rotate positions)")
        if type(module) is FusedFeedForward and module.activation != "relu":
            lines.add(f"trainer.kernels=fast: the feed-forward trains on the CPU with its reference code under "
                      f"model.activation={module.activation} (the fused kernel is ReLU's, the paper's)")
    return lines


KERNELS["fast"] = use_fast_kernels  # build_model(..., kernels="fast")

def loss_function(kernels: str):
    """The training loss for trainer.kernels: the model's `sequence_loss` (looked up when asked, so that an edit
    to it, or a test's monkeypatch, is what trains), or the blockwise one where it passes its check for the
    logits' device and dtype (else the model's, as for every other piece)."""
    return model_loss.sequence_loss if kernels == "reference" else _fast_loss


def _fast_loss(logits, tgt_out, label_smoothing: float, pad_id: int):
    if works("blockwise_loss", logits.device.type, logits.dtype):
        return blockwise_sequence_loss(logits, tgt_out, label_smoothing, pad_id)
    return model_loss.sequence_loss(logits, tgt_out, label_smoothing, pad_id)


__all__ = ["use_fast_kernels", "loss_function", "check_all", "works", "CHECKS", "FAST_PIECES"]
