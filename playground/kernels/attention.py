"""A drop-in for MultiHeadAttention: torch's fused attention (SDPA), and a CPU kernel with a hand-written backward.

- `cpu_attention` (CPU training): Equation (1) from the projections to the concatenated heads, with dropout on
  the weights, as one autograd function. Autograd's version of the reference copies the heads about seven
  times per call (each view of q, k, v made contiguous for the matrix products, their gradients stacked and
  reshaped); this one lays them out once each way. torch's own CPU kernels are slower here when training:
  with dropout they fall back to an unfused path, and their bf16 backward took twice as long (torch 2.13,
  short sequences).
- `sdpa_attention` (inference anywhere, training on GPUs): torch.nn.functional.scaled_dot_product_attention,
  which picks a flash or memory-efficient kernel where the device has one.
- `append_to_cache` (incremental decoding): the self-attention's keys and values go into a buffer with room to
  grow, written in place, where the reference concatenates the whole cache again at every step (a tenth of a
  cached greedy decoding's time on a CPU at d256).
Tests hold both to the reference `scaled_dot_product_attention`'s outputs and gradients. Attention maps
(record_weights), rotary positions while training on the CPU, and torch.compile take the reference path.
"""

import math

import torch
import torch.nn.functional as F

from ..model.attention import MultiHeadAttention, causal_mask, scaled_dot_product_attention
from .dropout import keep_mask
from .support import assert_close_in, check, compute_dtype, refuse_second_derivative, works


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
        device, dtype = q_or_qkv.device.type, compute_dtype(q_or_qkv)
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
        ctx.shape, ctx.scales = (B, T, S, H, Dh), (scale, keep_scale)
        ctx.dtypes = (q_or_qkv.dtype, None if kv is None else kv.dtype)
        return out.view(B, H, T, Dh).transpose(1, 2).reshape(B, T, D)  # (B, T, D)

    @staticmethod
    def backward(ctx, grad_out):
        refuse_second_derivative()
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


def cpu_attention(q_or_qkv, kv, heads: int, mask, p: float):
    """Multi-head attention from projections: self-attention from qkv (B, T, 3 D) with kv None, cross-attention
    from q (B, T, D) and kv (B, S, 2 D); mask (True keeps) broadcasts to (B, H, T, S). Returns (B, T, D)."""
    return _Attention.apply(q_or_qkv, kv, heads, mask, p)


def sdpa_attention(q, k, v, mask, dropout_p: float):
    """torch's fused softmax(Q K^T / sqrt(d_k)) V on (B, H, L, Dh) heads; mask True keeps. Returns (B, H, T, Dh)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def _heads(*shapes):
    return [torch.randn(*shape, requires_grad=True) for shape in shapes]


@check("cpu_attention", "the CPU attention kernel", devices=("cpu",))
def _check_cpu_attention(device, dtype):
    B, T, H, Dh = 2, 5, 2, 8
    (qkv,) = _heads((B, T, 3 * H * Dh))
    mask = causal_mask(T)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        ours = cpu_attention(qkv, None, H, mask, 0.0)
        q, k, v = qkv.view(B, T, 3, H, Dh).permute(2, 0, 3, 1, 4).unbind(0)
        theirs = scaled_dot_product_attention(q, k, v, mask)[0].transpose(1, 2).reshape(B, T, H * Dh)
    results = [[y, *torch.autograd.grad((y.float() ** 2).sum(), qkv)] for y in (ours, theirs)]
    assert_close_in(dtype, results[0], results[1], "attention outputs and gradients")


@check("sdpa_attention", "torch's scaled_dot_product_attention")
def _check_sdpa_attention(device, dtype):
    q, k, v = (t.detach().to(device) for t in _heads((2, 2, 5, 8), (2, 2, 7, 8), (2, 2, 7, 8)))
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool, device=device)
    mask[0, ..., 4:] = False
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        ours = sdpa_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask, 0.0)
        theirs = scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask)[0]
    assert_close_in(dtype, [ours], [theirs], "attention outputs")


def append_to_cache(cached, new):
    """cached (B, H, n, Dh) or None, new (B, H, T, Dh) -> what torch.cat([cached, new], dim=2) holds, as the first
    n + T positions of a buffer with room to grow. The new positions are written in place when `cached` is the
    newest view of a buffer made here and there is room; a full buffer moves to one twice the size. A tensor from
    elsewhere (beam search's reordered cache, say) is concatenated as the reference does. No tensor handed out
    before ever changes: only positions beyond every earlier view of the buffer are written."""
    n, (B, H, T, Dh) = (0 if cached is None else cached.size(2)), new.shape
    buffer = None if cached is None else cached._base  # a view's base: a buffer of ours, if it came from here
    ours = (buffer is not None and getattr(buffer, "filled", None) == n and cached.data_ptr() == buffer.data_ptr()
            and cached.stride() == buffer.stride() and buffer.dtype == new.dtype
            and buffer.shape[:2] == cached.shape[:2] == new.shape[:2] and buffer.size(3) == Dh)
    if cached is not None and not ours:
        buffer = torch.cat([cached, new], dim=2)  # a tensor from elsewhere, as the reference does; full from here on
    else:
        if cached is None or buffer.size(2) < n + T:  # the first step, or a full buffer: one twice the size
            grown = new.new_empty(B, H, max(16, 2 * (n + T)), Dh)  # (B, H, capacity, Dh)
            if n:
                grown[:, :, :n] = cached
            buffer = grown
        buffer[:, :, n:n + T] = new
    buffer.filled = n + T  # the positions written: only a view of exactly this length may append in place
    return buffer[:, :, :n + T]  # (B, H, n+T, Dh)


class FastMultiHeadAttention(MultiHeadAttention):
    """MultiHeadAttention computed by `cpu_attention` when training on the CPU, by `sdpa_attention` elsewhere;
    the reference forward for attention maps, under torch.compile on the CPU, and where a kernel failed its check.
    While decoding, the self-attention's cache grows in place (`append_to_cache`)."""

    def extend_cache(self, cache, k, v):
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and (k.requires_grad or v.requires_grad)):
            return super().extend_cache(cache, k, v)  # in-place writes would change what autograd saved
        cache["k"], cache["v"] = append_to_cache(cache.get("k"), k), append_to_cache(cache.get("v"), v)
        return cache["k"], cache["v"]  # (B, H, t+T, Dk), (B, H, t+T, Dh)

    def forward(self, x, memory=None, mask=None, rotary=None, cache=None):
        if self.record_weights:
            return super().forward(x, memory, mask, rotary, cache)
        cpu_training = x.device.type == "cpu" and self.training and torch.is_grad_enabled()
        compiling = torch.compiler.is_compiling()
        dtype = compute_dtype(x)
        if cpu_training and rotary is None and cache is None and not compiling and works("cpu_attention", "cpu", dtype):
            if self.self_attention:
                out = cpu_attention(self.qkv_proj(x), None, self.heads, mask, self.dropout.p)  # (B, T, D)
            else:
                out = cpu_attention(self.q_proj(x), self.kv_proj(memory), self.heads, mask, self.dropout.p)
            return self.out_proj(out)
        if not cpu_training and (compiling or works("sdpa_attention", x.device.type, dtype)):
            q, k, v = self.project(x, memory, rotary, cache)  # (B,H,T,Dk), (B,H,S,Dk), (B,H,S,Dh); self: S = T
            out = sdpa_attention(q, k, v, mask, self.dropout.p if self.training else 0.0)  # (B, H, T, Dh)
            return self.out_proj(self.merge_heads(out))
        return super().forward(x, memory, mask, rotary, cache)
