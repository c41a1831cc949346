"""The training loss: cross-entropy with label smoothing (Section 5.4), over real target tokens only.

With smoothing eps over V classes, the target distribution puts 1 - eps + eps/V on the right token and
eps/V on every other one. The model is less sure of itself for it, which costs perplexity and helps BLEU.
"""

import torch.nn.functional as F


def sequence_loss(logits, tgt_out, label_smoothing: float, pad_id: int):
    """Mean label-smoothed cross-entropy of logits (B, T, V) against tgt_out (B, T), PAD positions left out."""
    per_token = F.cross_entropy(logits.float().flatten(0, 1), tgt_out.flatten(), ignore_index=pad_id,
                                label_smoothing=label_smoothing, reduction="none")  # (B*T,), 0 where PAD
    real_tokens = (tgt_out != pad_id).sum().clamp(min=1)  # a batch of padding only gives 0, not 0/0
    return per_token.sum() / real_tokens
