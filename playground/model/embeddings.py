"""Embeddings and positional encodings (Sections 3.4 and 3.5), plus the variants a playground compares.

Every positional encoding has the same interface: `forward(x, offset)` returns the token embeddings
(B, L, D) with position information added for positions offset..offset+L-1, and `rotary` is either
None or a module that self-attention applies to its queries and keys.
"""

import math

import torch
from torch import nn


class TokenEmbedding(nn.Module):
    """Learned embeddings multiplied by sqrt(d_model) (Section 3.4); scaled=False leaves that out (an ablation)."""

    def __init__(self, vocab_size: int, d_model: int, scaled: bool = True):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.scale = math.sqrt(d_model) if scaled else 1.0
        nn.init.normal_(self.embedding.weight, std=d_model**-0.5)  # scaled embeddings start with unit variance

    @property
    def weight(self):
        return self.embedding.weight

    def forward(self, tokens):
        return self.embedding(tokens) * self.scale  # (B, L, D)


def sinusoid_table(max_len: int, d_model: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...) (Section 3.5)."""
    position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (L, 1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: d_model // 2])
    return table  # (L, D)


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoids added to the embeddings (Section 3.5, the paper's choice)."""

    rotary = None

    def __init__(self, d_model: int, heads: int, max_len: int):
        super().__init__()
        self.register_buffer("table", sinusoid_table(max_len, d_model), persistent=False)

    def forward(self, x, offset: int = 0):
        return x + self.table[offset : offset + x.size(1)].to(x.dtype)


class LearnedPositionalEncoding(nn.Module):
    """A learned vector per position added to the embeddings (the paper's Table 3 row (E))."""

    rotary = None

    def __init__(self, d_model: int, heads: int, max_len: int):
        super().__init__()
        self.embedding = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, x, offset: int = 0):
        positions = torch.arange(offset, offset + x.size(1), device=x.device)
        return x + self.embedding(positions).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Rotates each pair of query/key features by an angle proportional to the position (RoFormer, Su et al. 2021)."""

    def __init__(self, head_dim: int, max_len: int):
        super().__init__()
        angles = torch.arange(max_len, dtype=torch.float32)[:, None] * torch.exp(
            torch.arange(0, head_dim, 2, dtype=torch.float32) * (-math.log(10000.0) / head_dim)
        )  # (L, Dh/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x, offset: int = 0):
        L = x.size(-2)
        cos, sin = self.cos[offset : offset + L].to(x.dtype), self.sin[offset : offset + L].to(x.dtype)  # (L, Dh/2)
        x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, L, Dh/2)
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)  # (B, H, L, Dh)


class RotaryPositionalEncoding(nn.Module):
    """Adds nothing to the embeddings; self-attention rotates queries and keys instead (RoPE)."""

    def __init__(self, d_model: int, heads: int, max_len: int):
        super().__init__()
        self.rotary = RotaryEmbedding(d_model // heads, max_len)

    def forward(self, x, offset: int = 0):
        return x


class NoPositionalEncoding(nn.Module):
    """No position information at all: the encoder sees a bag of tokens (only the causal decoder can count)."""

    rotary = None

    def __init__(self, d_model: int, heads: int, max_len: int):
        super().__init__()

    def forward(self, x, offset: int = 0):
        return x


POSITIONAL_ENCODINGS = {
    "sinusoidal": SinusoidalPositionalEncoding,
    "learned": LearnedPositionalEncoding,
    "rotary": RotaryPositionalEncoding,
    "none": NoPositionalEncoding,
}
