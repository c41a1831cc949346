"""Attention (Section 3.2): scaled dot-product attention and multi-head attention.

Masks have one meaning everywhere in this package: a boolean tensor where True means "this query may
attend to this key" (keep) and False means "hide it". That is also what
torch.nn.functional.scaled_dot_product_attention means by a boolean mask.
"""

import math

import torch
from torch import nn

from .dropout import Dropout


def padding_mask(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Keep every key that is not padding: (B, S) ids -> (B, 1, 1, S) mask, broadcast over heads and queries."""
    return (tokens != pad_id)[:, None, None, :]  # (B, 1, 1, S)


def causal_mask(length: int, device=None) -> torch.Tensor:
    """Keep the keys at or before each query's position (Section 3.2.3: no looking at the future)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()  # (T, T)


def scaled_dot_product_attention(q, k, v, mask=None, dropout=None, scaled=True):
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V, Equation (1). Returns (output, weights).

    `dropout`, a module or function, is applied to the weights before they average the values (the
    weights returned are the ones before dropout). scaled=False leaves out the 1/sqrt(d_k) (an ablation).
    """
    d_k = q.size(-1)
    scores = q @ k.transpose(-2, -1)  # (B, H, T, S)
    if scaled:  # without it, dot products grow with d_k and push the softmax where its gradients vanish (3.2.1)
        scores = scores / math.sqrt(d_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # a hidden key gets weight exp(-inf) = 0
    weights = scores.softmax(dim=-1)  # (B, H, T, S), each row sums to 1
    attended = dropout(weights) if dropout is not None else weights
    return attended @ v, weights  # (B, H, T, Dh), (B, H, T, S)


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, head_i = Attention(Q W^Q_i, K W^K_i, V W^V_i) (Section 3.2.2).

    Self-attention projects Q, K and V with one fused matrix; cross-attention projects Q from the decoder
    and K, V (fused) from the encoder output. `record_weights = True` keeps the last attention weights in
    `self.weights` (B, H, T, S) for heatmaps.
    """

    def __init__(self, d_model: int, heads: int, dropout_p: float, self_attention: bool, scaled: bool = True,
                 key_dim: int = None):
        super().__init__()
        self.heads, self.head_dim = heads, d_model // heads  # d_v = d_model / h (Section 3.2.2)
        self.key_dim = key_dim or self.head_dim  # d_k: the paper's is d_v too; Table 3 row (B) makes it smaller
        self.self_attention, self.scaled = self_attention, scaled
        qk = heads * self.key_dim
        if self_attention:
            self.qkv_proj = nn.Linear(d_model, 2 * qk + d_model)
        else:
            self.q_proj = nn.Linear(d_model, qk)
            self.kv_proj = nn.Linear(d_model, qk + d_model)
        self.out_proj = nn.Linear(d_model, d_model)  # W^O
        self.dropout = Dropout(dropout_p)  # on the attention weights
        self.record_weights = False
        self.weights = None

    def split_heads(self, x, sizes):
        """(B, L, H * sum(sizes)) -> one (B, H, L, size) tensor per size (queries and keys d_k, values d_v): each
        head sees its own features."""
        B, L, _ = x.shape
        parts = x.split([self.heads * size for size in sizes], dim=-1)
        return [part.view(B, L, self.heads, size).transpose(1, 2) for part, size in zip(parts, sizes)]

    def project(self, x, memory=None, rotary=None, cache=None):
        """Queries, keys and values, each (B, H, L, Dh); while decoding, keys and values come from the cache too."""
        if self.self_attention:
            q, k, v = self.split_heads(self.qkv_proj(x), (self.key_dim, self.key_dim, self.head_dim))  # (B, H, T, *)
            offset = cache["k"].size(2) if cache is not None and "k" in cache else 0
            if rotary is not None:
                q, k = rotary(q, offset), rotary(k, offset)
            if cache is not None:  # incremental decoding
                k, v = self.extend_cache(cache, k, v)  # (B, H, t+T, Dk), (B, H, t+T, Dh)
            return q, k, v
        (q,) = self.split_heads(self.q_proj(x), (self.key_dim,))  # (B, H, T, Dk)
        if cache is not None and "k" in cache:  # the source does not change while decoding
            return q, cache["k"], cache["v"]
        k, v = self.split_heads(self.kv_proj(memory), (self.key_dim, self.head_dim))  # (B, H, S, Dk), (B, H, S, Dh)
        if cache is not None:
            cache["k"], cache["v"] = k, v
        return q, k, v

    def extend_cache(self, cache, k, v):
        """Append this step's keys and values (B, H, T, *) to the self-attention's cache; returns all so far."""
        if "k" in cache:
            k = torch.cat([cache["k"], k], dim=2)  # (B, H, t+T, Dk)
            v = torch.cat([cache["v"], v], dim=2)  # (B, H, t+T, Dh)
        cache["k"], cache["v"] = k, v
        return k, v

    def merge_heads(self, out):
        """(B, H, T, Dh) -> (B, T, D): the heads concatenated, ready for W^O."""
        B, H, T, Dh = out.shape
        return out.transpose(1, 2).reshape(B, T, H * Dh)

    def forward(self, x, memory=None, mask=None, rotary=None, cache=None):
        """x (B, T, D) queries; memory (B, S, D) for cross-attention; cache: a dict kept across decoding steps."""
        q, k, v = self.project(x, memory, rotary, cache)  # (B,H,T,Dk), (B,H,S,Dk), (B,H,S,Dh); self: S = T
        out, weights = scaled_dot_product_attention(q, k, v, mask, self.dropout, self.scaled)  # (B,H,T,Dh), (B,H,T,S)
        if self.record_weights:
            self.weights = weights
        return self.out_proj(self.merge_heads(out))  # (B, T, D)
