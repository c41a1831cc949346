"""Attention (Section 3.2): scaled dot-product attention and multi-head attention.

Masks have one meaning everywhere in this package: a boolean tensor where True means "this query may
attend to this key" (keep) and False means "hide it". That is also what
torch.nn.functional.scaled_dot_product_attention means by a boolean mask.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .dropout import dropout
from .fused import attention as fused_attention
from .linear import Linear


def padding_mask(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Keep every key that is not padding: (B, S) ids -> (B, 1, 1, S) mask, broadcast over heads and queries."""
    return (tokens != pad_id)[:, None, None, :]  # (B, 1, 1, S)


def causal_mask(length: int, device=None) -> torch.Tensor:
    """Keep the keys at or before each query's position (Section 3.2.3: no looking at the future)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()  # (T, T)


def scaled_dot_product_attention(q, k, v, mask=None, dropout_p=0.0, training=False):
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V, Equation (1). Returns (output, weights)."""
    d_k = q.size(-1)
    scores = (q @ k.transpose(-2, -1)).div_(math.sqrt(d_k))  # (B, H, T, S), scaled in place: one tensor fewer
    if mask is not None:
        scores.masked_fill_(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)  # (B, H, T, S)
    attended = dropout(weights, dropout_p, training)  # (B, H, T, S)
    return attended @ v, weights  # (B, H, T, Dh), (B, H, T, S)


def _math_attention(q, k, v, mask, dropout_p, training):
    return scaled_dot_product_attention(q, k, v, mask, dropout_p, training)[0]


def _fused_attention(q, k, v, mask, dropout_p, training):
    if training and q.device.type == "cpu":
        # torch's CPU kernels are slower than the explicit math when training: with dropout they fall back to an
        # unfused path, and the fused backward in bf16 took twice as long as the math (2.13, short sequences).
        # (MultiHeadAttention trains on the CPU through fused.py's attention instead; this serves rotary.)
        return _math_attention(q, k, v, mask, dropout_p, training)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p if training else 0.0)


# model.attention: how softmax(QK^T/sqrt(d_k))V is computed. Both give the same numbers (a test shows
# it); "sdpa" runs torch's fused kernels, "math" runs the three lines above, for reading and stepping.
ATTENTION_IMPLEMENTATIONS = {"math": _math_attention, "sdpa": _fused_attention}


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, head_i = Attention(Q W^Q_i, K W^K_i, V W^V_i) (Section 3.2.2).

    Self-attention projects Q, K and V with one fused matrix; cross-attention projects Q from the decoder
    and K, V (fused) from the encoder output. `record_weights = True` keeps the last attention weights in
    `self.weights` (B, H, T, S) for heatmaps, at the cost of the slower explicit path.
    """

    def __init__(self, d_model: int, heads: int, dropout: float, self_attention: bool, implementation: str = "sdpa"):
        super().__init__()
        self.heads, self.head_dim, self.dropout = heads, d_model // heads, dropout
        self.self_attention = self_attention
        if self_attention:
            self.qkv_proj = Linear(d_model, 3 * d_model)
        else:
            self.q_proj = Linear(d_model, d_model)
            self.kv_proj = Linear(d_model, 2 * d_model)
        self.out_proj = Linear(d_model, d_model)
        self.attend = ATTENTION_IMPLEMENTATIONS[implementation]
        self.record_weights = False
        self.weights = None

    def _split(self, x, parts):
        B, L, _ = x.shape
        return x.view(B, L, parts, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (parts, B, H, L, Dh)

    def forward(self, x, memory=None, mask=None, rotary=None, cache=None):
        """x (B, T, D) queries; memory (B, S, D) for cross-attention; cache: a dict kept across decoding steps."""
        B, T, D = x.shape
        if (self.attend is _fused_attention and self.training and x.device.type == "cpu" and torch.is_grad_enabled()
                and rotary is None and cache is None and not self.record_weights):
            # the same maths with a hand-written backward and fewer copies of the heads (fused.py)
            if self.self_attention:
                out = fused_attention(self.qkv_proj(x), None, self.heads, mask, self.dropout)  # (B, T, D)
            else:
                out = fused_attention(self.q_proj(x), self.kv_proj(memory), self.heads, mask, self.dropout)
            return self.out_proj(out)
        if self.self_attention:
            q, k, v = self._split(self.qkv_proj(x), 3)  # each (B, H, T, Dh)
            offset = cache["k"].size(2) if cache is not None and "k" in cache else 0
            if rotary is not None:
                q, k = rotary(q, offset), rotary(k, offset)
            if cache is not None:  # incremental decoding: append this step's keys and values
                if "k" in cache:
                    k = torch.cat([cache["k"], k], dim=2)  # (B, H, t+T, Dh)
                    v = torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
        else:
            q = self._split(self.q_proj(x), 1)[0]  # (B, H, T, Dh)
            if cache is not None and "k" in cache:  # the source does not change while decoding
                k, v = cache["k"], cache["v"]
            else:
                k, v = self._split(self.kv_proj(memory), 2)  # each (B, H, S, Dh)
                if cache is not None:
                    cache["k"], cache["v"] = k, v
        if self.record_weights:
            out, self.weights = scaled_dot_product_attention(q, k, v, mask, self.dropout, self.training)
        else:
            out = self.attend(q, k, v, mask, self.dropout, self.training)  # (B, H, T, Dh)
        out = out.transpose(1, 2).reshape(B, T, D)  # (B, T, D): heads concatenated
        return self.out_proj(out)
