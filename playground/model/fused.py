"""Two layers as hand-written autograd functions for CPU training: the feed-forward network and attention.

Both compute the same maths as the readable modules (`PositionwiseFeedForward` in layers.py,
`scaled_dot_product_attention` in attention.py; tests hold them to the same outputs and gradients), written
out by hand so that their large intermediate tensors are walked over, copied and allocated as few times as
possible: on a CPU that, more than the arithmetic, is what these layers cost.

The feed-forward network, Equation (2) with dropout on the hidden activations,
FFN(x) = Dropout(max(0, x W1 + b1)) W2 + b2, where the (B*L, d_ff) hidden tensor is the largest in a layer:
- ReLU and dropout are applied in place to x W1 + b1; the result is zero exactly where either zeroed it,
  so the backward pass reads its mask from that result (no mask is kept) and applies it in place.
- Dropout's 1 / (1 - p) is applied to the (B*L, D) output of the second product, not to the d_ff-wide h.
Autograd would do six passes over that tensor and allocate four more like it on top of the two matrix
products; this does three passes and allocates none (on a CPU, a fresh tensor's page faults cost more
than a pass over it).

Attention, Equation (1), from the projections to the concatenated heads: see `_Attention`. Autograd's
version copies the heads about seven times per call (each view of q, k, v made contiguous for the matrix
products, their gradients stacked and reshaped); this one lays them out once each way.

Under autocast the matrix products run in the autocast dtype, as nn.Linear's would.
"""

import math

import torch

from .dropout import keep_mask
from .linear import matmul_t


def _compute_dtype(x):
    """The dtype the matrix products run in: autocast's where it is on (as nn.Linear's would), else x's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class _FeedForwardReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, p: float):
        lead, D = x.shape[:-1], x.shape[-1]
        device, dtype = x.device.type, _compute_dtype(x)
        with torch.autocast(device, enabled=False):
            x2, w1c, w2c = x.reshape(-1, D).to(dtype), w1.to(dtype), w2.to(dtype)  # (N, D), (F, D), (D, F)
            h = matmul_t(x2, w1c, b1.to(dtype)).relu_()  # (N, F)
            scale = 1.0
            if p > 0:
                keep, scale = keep_mask(h.shape, p, h.device)  # (N, F) 0/1
                h.mul_(keep)
            if scale == 0:  # p = 1: everything dropped, only the bias is left
                out = b2.to(dtype).expand(h.size(0), -1).clone()
            else:  # the bias inside the product (oneDNN adds it as it writes), the scale after: a small (N, D) pass
                out = matmul_t(h, w2c, b2.to(dtype) / scale).mul_(scale)  # (N, D): scale (h W2^T + b2 / scale)
        # h > 0 exactly where ReLU passed and dropout kept: h itself is the mask the backward pass needs
        ctx.save_for_backward(x2, w1c, w2c, h)
        ctx.x_shape, ctx.scale, ctx.dtypes = x.shape, scale, (x.dtype, w1.dtype, b1.dtype, w2.dtype, b2.dtype)
        return out.view(*lead, -1)

    @staticmethod
    def backward(ctx, grad_out):
        _refuse_second_derivative()
        x2, w1c, w2c, h = ctx.saved_tensors
        grad_out = grad_out.reshape(-1, grad_out.size(-1)).to(x2.dtype)  # (N, D)
        grad_b2 = grad_out.sum(0)
        if ctx.scale != 1.0:
            grad_out = grad_out * ctx.scale  # (N, D): the small side of the product
        grad_w2 = grad_out.t() @ h  # (D, F)
        grad_h = matmul_t(grad_out, w2c.t())  # (N, F) = grad_out W2
        torch.ops.aten.threshold_backward.grad_input(grad_h, h, 0, grad_input=grad_h)  # zero where h == 0, in place
        grad_b1 = grad_h.sum(0)
        grad_w1 = grad_h.t() @ x2  # (F, D)
        grad_x = matmul_t(grad_h, w1c.t())  # (N, D) = grad_h W1
        x_dtype, w1_dtype, b1_dtype, w2_dtype, b2_dtype = ctx.dtypes
        return (grad_x.to(x_dtype).view(ctx.x_shape), grad_w1.to(w1_dtype), grad_b1.to(b1_dtype),
                grad_w2.to(w2_dtype), grad_b2.to(b2_dtype), None)


def _refuse_second_derivative():
    """A backward pass that autograd records (create_graph=True) would take these hand-written steps as the
    derivative's definition, and they have none of their own: say so instead of returning a wrong one."""
    if torch.is_grad_enabled():
        raise RuntimeError("the fused CPU training layers (playground/model/fused.py) have no second derivative: "
                           "backward(create_graph=True) is not supported through them")


def feed_forward_relu(x, w1, b1, w2, b2, p: float):
    """Dropout(ReLU(x W1^T + b1)) W2^T + b2 for x (..., D), weights as nn.Linear stores them: W1 (F, D), W2 (D, F)."""
    return _FeedForwardReLU.apply(x, w1, b1, w2, b2, p)


class _Attention(torch.autograd.Function):
    """softmax(Q K^T / sqrt(d_k) + mask) V with dropout on the weights, Equation (1), from the projections.

    Takes the fused projection (B, T, 3 D) for self-attention, or Q (B, T, D) and the fused K, V (B, S, 2 D)
    for cross-attention, and returns the heads concatenated (B, T, D). Each projection is laid out head by
    head once (one copy) so that every matrix product reads contiguous (B*H, L, Dh) blocks; the scale goes
    into the first product's alpha, the mask in place, dropout's 1 / (1 - p) into the second product's
    alpha. Saved for backward: the laid-out projections, the softmax weights and the uint8 dropout mask.
    """

    @staticmethod
    def forward(ctx, q_or_qkv, kv, heads: int, mask, p: float):
        device, dtype = q_or_qkv.device.type, _compute_dtype(q_or_qkv)
        B, T, width = q_or_qkv.shape
        self_attention = kv is None
        D = width // 3 if self_attention else width
        H, Dh = heads, D // heads
        with torch.autocast(device, enabled=False):
            if self_attention:
                qkv = _by_head(q_or_qkv.to(dtype), 3, H)  # (3, B, H, T, Dh)
                q, k, v, S, saved = qkv[0], qkv[1], qkv[2], T, (qkv,)
            else:
                q, kv_heads = _by_head(q_or_qkv.to(dtype), 1, H)[0], _by_head(kv.to(dtype), 2, H)  # (B, H, L, Dh)
                k, v, S, saved = kv_heads[0], kv_heads[1], kv.size(1), (q, kv_heads)
            q, k, v = q.view(B * H, T, Dh), k.view(B * H, S, Dh), v.view(B * H, S, Dh)
            scale = 1.0 / math.sqrt(Dh)
            scores = torch.baddbmm(q.new_empty(B * H, T, S), q, k.transpose(1, 2), beta=0, alpha=scale)  # (BH, T, S)
            if mask is not None:
                scores.view(B, H, T, S).masked_fill_(~mask, float("-inf"))
            weights = torch.softmax(scores, dim=-1)  # (BH, T, S)
            del scores
            keep, keep_scale = None, 1.0
            if p > 0:
                keep, keep_scale = keep_mask(weights.shape, p, weights.device)  # (BH, T, S) 0/1
                attended = torch.mul(weights, keep, out=torch.empty_like(weights))  # (out=: far faster than *)
            else:
                attended = weights
            out = torch.baddbmm(q.new_empty(B * H, T, Dh), attended, v, beta=0, alpha=keep_scale)  # (BH, T, Dh)
        ctx.save_for_backward(*saved, weights, keep)
        ctx.shape, ctx.scales, ctx.dtypes = (B, T, S, H, Dh), (scale, keep_scale), (q_or_qkv.dtype, None if kv is None else kv.dtype)
        return out.view(B, H, T, Dh).transpose(1, 2).reshape(B, T, D)  # (B, T, D)

    @staticmethod
    def backward(ctx, grad_out):
        _refuse_second_derivative()
        B, T, S, H, Dh = ctx.shape
        scale, keep_scale = ctx.scales
        *saved, weights, keep = ctx.saved_tensors
        dtype = weights.dtype
        g = grad_out.to(dtype).reshape(B, T, H, Dh).transpose(1, 2).reshape(B * H, T, Dh)  # (BH, T, Dh)
        if len(saved) == 1:
            (qkv,) = saved
            grad_qkv = torch.empty_like(qkv)  # (3, B, H, T, Dh)
            q, k, v = (t.view(B * H, T, Dh) for t in qkv)
            grad_q, grad_k, grad_v = (t.view(B * H, T, Dh) for t in grad_qkv)
        else:
            q_heads, kv_heads = saved
            grad_q_heads, grad_kv = torch.empty_like(q_heads), torch.empty_like(kv_heads)
            q, (k, v) = q_heads.view(B * H, T, Dh), (t.view(B * H, S, Dh) for t in kv_heads)
            grad_q, (grad_k, grad_v) = grad_q_heads.view(B * H, T, Dh), (t.view(B * H, S, Dh) for t in grad_kv)
        attended = weights if keep is None else torch.mul(weights, keep, out=torch.empty_like(weights))
        torch.baddbmm(grad_v, attended.transpose(1, 2), g, beta=0, alpha=keep_scale, out=grad_v)
        del attended
        grad_weights = torch.bmm(g, v.transpose(1, 2))  # (BH, T, S), before dropout's mask and scale
        if keep is not None:
            grad_weights.mul_(keep)
        grad_scores = torch.ops.aten._softmax_backward_data(grad_weights, weights, -1, dtype)  # (BH, T, S)
        del grad_weights
        torch.baddbmm(grad_q, grad_scores, k, beta=0, alpha=scale * keep_scale, out=grad_q)
        torch.baddbmm(grad_k, grad_scores.transpose(1, 2), q, beta=0, alpha=scale * keep_scale, out=grad_k)
        q_dtype, kv_dtype = ctx.dtypes
        if len(saved) == 1:
            return _from_heads(grad_qkv).to(q_dtype), None, None, None, None
        return _from_heads(grad_q_heads[None]).to(q_dtype), _from_heads(grad_kv).to(kv_dtype), None, None, None


def _by_head(x, parts: int, heads: int):
    """(B, L, parts * D) -> (parts, B, H, L, Dh), contiguous: each head's block in one piece."""
    B, L, width = x.shape
    return x.reshape(B, L, parts, heads, width // parts // heads).permute(2, 0, 3, 1, 4).contiguous()


def _from_heads(x):
    """(parts, B, H, L, Dh) -> (B, L, parts * D): the inverse of _by_head."""
    parts, B, H, L, Dh = x.shape
    return x.permute(1, 3, 0, 2, 4).reshape(B, L, parts * H * Dh)


def attention(q_or_qkv, kv, heads: int, mask, p: float):
    """Multi-head attention from projections: self-attention from qkv (B, T, 3 D) with kv None, cross-attention
    from q (B, T, D) and kv (B, S, 2 D); mask (True keeps) broadcasts to (B, H, T, S). Returns (B, T, D)."""
    return _Attention.apply(q_or_qkv, kv, heads, mask, p)
