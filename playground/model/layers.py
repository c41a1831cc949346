"""The encoder and decoder layers (Section 3.1) and their parts: feed-forward, residual, normalisation."""

import torch.nn.functional as F
from torch import nn

from .attention import MultiHeadAttention
from .dropout import Dropout


class PositionwiseFeedForward(nn.Module):
    """FFN(x) = max(0, x W1 + b1) W2 + b2, Equation (2), with the activation as a variant."""

    def __init__(self, d_model: int, d_ff: int, dropout_p: float, activation: str = "relu"):
        super().__init__()
        self.activation = activation
        gated = activation == "swiglu"  # SwiGLU (Shazeer 2020): silu(x W1) * (x W3), W1 and W3 fused
        self.w1 = nn.Linear(d_model, 2 * d_ff if gated else d_ff)
        self.w2 = nn.Linear(d_ff, d_model)
        self.dropout = Dropout(dropout_p)  # on the hidden layer

    def forward(self, x):
        h = self.w1(x)  # (B, L, d_ff) or (B, L, 2 d_ff)
        h = ACTIVATIONS[self.activation](h)  # (B, L, d_ff): max(0, x W1 + b1) for relu
        return self.w2(self.dropout(h))  # (B, L, D)


def _swiglu(h):
    gate, value = h.chunk(2, dim=-1)
    return F.silu(gate) * value


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "swiglu": _swiglu}

NORMS = {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm}


class _Residual(nn.Module):
    """A residual connection around a sublayer, with its norm and dropout; subclasses say where the norm goes.
    The ablations: residual=False drops the "x +", normalize=False the norm."""

    def __init__(self, d_model: int, dropout_p: float, norm: str, residual: bool = True, normalize: bool = True):
        super().__init__()
        self.norm = NORMS[norm](d_model) if normalize else nn.Identity()
        self.dropout = Dropout(dropout_p)
        self.residual = residual


class PostNormResidual(_Residual):
    """LayerNorm(x + Dropout(Sublayer(x))), Section 3.1 and 5.4: the paper's placement."""

    def forward(self, x, sublayer):
        out = self.dropout(sublayer(x))
        return self.norm(x + out if self.residual else out)


class PreNormResidual(_Residual):
    """x + Dropout(Sublayer(LayerNorm(x))): normalise the input instead (Xiong et al. 2020); trains without warmup."""

    def forward(self, x, sublayer):
        out = self.dropout(sublayer(self.norm(x)))
        return x + out if self.residual else out


NORM_PLACEMENTS = {"post": PostNormResidual, "pre": PreNormResidual}


def _residual_maker(norm_position, ablate):
    """The residual wrapper of norm_position, without its "x +" or its norm where model.ablate says so."""
    def make(d_model, dropout_p, norm):
        return NORM_PLACEMENTS[norm_position](d_model, dropout_p, norm, residual="residual" not in ablate,
                                              normalize="layer_norm" not in ablate)
    return make


def _or(p, default):
    """A dropout probability that may be left unset (None): the layer's P_drop then."""
    return default if p is None else p


class EncoderLayer(nn.Module):
    """Self-attention, then feed-forward, each wrapped in a residual connection and normalisation (Section 3.1)."""

    def __init__(self, d_model, heads, d_ff, dropout_p, norm_position="post", norm="layernorm", activation="relu",
                 ablate=(), key_dim=None, attention_dropout_p=None, ffn_dropout_p=None):
        super().__init__()
        residual = _residual_maker(norm_position, ablate)
        attention = dict(scaled="attention_scale" not in ablate, key_dim=key_dim)
        attention_p, ffn_p = _or(attention_dropout_p, dropout_p), _or(ffn_dropout_p, dropout_p)
        self.self_attn = MultiHeadAttention(d_model, heads, attention_p, self_attention=True, **attention)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff, ffn_p, activation)
        self.attn_residual = residual(d_model, dropout_p, norm)
        self.ff_residual = residual(d_model, dropout_p, norm)

    def forward(self, x, src_mask, rotary=None):
        x = self.attn_residual(x, lambda h: self.self_attn(h, mask=src_mask, rotary=rotary))  # (B, S, D)
        return self.ff_residual(x, self.feed_forward)  # (B, S, D)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention over the encoder output, then feed-forward (Section 3.1)."""

    def __init__(self, d_model, heads, d_ff, dropout_p, norm_position="post", norm="layernorm", activation="relu",
                 ablate=(), key_dim=None, attention_dropout_p=None, ffn_dropout_p=None):
        super().__init__()
        residual = _residual_maker(norm_position, ablate)
        attention = dict(scaled="attention_scale" not in ablate, key_dim=key_dim)
        attention_p, ffn_p = _or(attention_dropout_p, dropout_p), _or(ffn_dropout_p, dropout_p)
        self.self_attn = MultiHeadAttention(d_model, heads, attention_p, self_attention=True, **attention)
        self.cross_attn = MultiHeadAttention(d_model, heads, attention_p, self_attention=False, **attention)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff, ffn_p, activation)
        self.self_residual = residual(d_model, dropout_p, norm)
        self.cross_residual = residual(d_model, dropout_p, norm)
        self.ff_residual = residual(d_model, dropout_p, norm)

    def forward(self, y, memory, src_mask, tgt_mask, rotary=None, cache=None):
        self_cache = cross_cache = None
        if cache is not None:
            self_cache, cross_cache = cache.setdefault("self", {}), cache.setdefault("cross", {})
        y = self.self_residual(y, lambda h: self.self_attn(h, mask=tgt_mask, rotary=rotary, cache=self_cache))
        y = self.cross_residual(y, lambda h: self.cross_attn(h, memory=memory, mask=src_mask, cache=cross_cache))
        return self.ff_residual(y, self.feed_forward)  # (B, T, D)
