"""Dropout (Srivastava et al. 2014), the paper's regulariser (Section 5.4).

In training, every element is zeroed with probability p and the rest are scaled by 1 / (1 - p), so that
the expected value of each element is unchanged and nothing needs rescaling at test time. In evaluation
it does nothing. The paper applies it to the sums of the embeddings and positional encodings and to each
sublayer's output before the residual add (model.dropout). Like nn.Transformer, the model also applies it
to the attention weights and the feed-forward's hidden layer, with model.dropout unless
model.attention_dropout and model.ffn_dropout say otherwise (0 for the paper's own model). Every use goes
through `Dropout` below.
"""

import torch.nn.functional as F
from torch import nn


def dropout(x, p: float, training: bool):
    """Zero each element of x with probability p and scale the rest by 1 / (1 - p), in training only."""
    if not training:
        return x
    return F.dropout(x, p, training=True)  # a Bernoulli(1 - p) mask per element, times x / (1 - p); p = 0: x


class Dropout(nn.Module):
    """nn.Dropout's interface around `dropout` above, so that an edit to that function reaches every use."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"
