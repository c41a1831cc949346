"""The position-wise feed-forward network with ReLU and dropout as one autograd function, for CPU training.

This is Equation (2) with dropout on the hidden activations, FFN(x) = Dropout(max(0, x W1 + b1)) W2 + b2,
the same maths as `PositionwiseFeedForward` in layers.py, written out by hand so that the (B*L, d_ff)
hidden tensor, the largest in a layer, is walked over as few times as possible:

- ReLU and dropout are applied in place to x W1 + b1; the result is zero exactly where either zeroed it,
  so the backward pass reads its mask from that result (no mask is kept) and applies it in place.
- Dropout's 1 / (1 - p) is folded into the second matrix product (addmm's alpha) instead of a pass of its own.

Autograd would do six passes over that tensor and allocate four more like it on top of the two matrix
products; this does three passes and allocates none (on a CPU, a fresh tensor's page faults cost more
than a pass over it). Under autocast the matrix products run in the autocast dtype, as
nn.Linear's would. A test holds this and the readable module to the same outputs and gradients.
"""

import torch

from .dropout import keep_mask


class _FeedForwardReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, p: float):
        lead, D = x.shape[:-1], x.shape[-1]
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        with torch.autocast(device, enabled=False):
            x2, w1c, w2c = x.reshape(-1, D).to(dtype), w1.to(dtype), w2.to(dtype)  # (N, D), (F, D), (D, F)
            h = torch.addmm(b1.to(dtype), x2, w1c.t()).relu_()  # (N, F)
            scale = 1.0
            if p > 0:
                keep, scale = keep_mask(h.shape, p, h.device)  # (N, F) 0/1
                h.mul_(keep)
            out = torch.addmm(b2.to(dtype), h, w2c.t(), alpha=scale)  # (N, D)
        # h > 0 exactly where ReLU passed and dropout kept: h itself is the mask the backward pass needs
        ctx.save_for_backward(x2, w1c, w2c, h)
        ctx.x_shape, ctx.scale, ctx.dtypes = x.shape, scale, (x.dtype, w1.dtype, b1.dtype, w2.dtype, b2.dtype)
        return out.view(*lead, -1)

    @staticmethod
    def backward(ctx, grad_out):
        x2, w1c, w2c, h = ctx.saved_tensors
        grad_out = grad_out.reshape(-1, grad_out.size(-1)).to(x2.dtype)  # (N, D)
        grad_b2 = grad_out.sum(0)
        if ctx.scale != 1.0:
            grad_out = grad_out * ctx.scale  # (N, D): the small side of the product
        grad_w2 = grad_out.t() @ h  # (D, F)
        grad_h = grad_out @ w2c  # (N, F)
        torch.ops.aten.threshold_backward.grad_input(grad_h, h, 0, grad_input=grad_h)  # zero where h == 0, in place
        grad_b1 = grad_h.sum(0)
        grad_w1 = grad_h.t() @ x2  # (F, D)
        grad_x = grad_h @ w1c  # (N, D)
        x_dtype, w1_dtype, b1_dtype, w2_dtype, b2_dtype = ctx.dtypes
        return (grad_x.to(x_dtype).view(ctx.x_shape), grad_w1.to(w1_dtype), grad_b1.to(b1_dtype),
                grad_w2.to(w2_dtype), grad_b2.to(b2_dtype), None)


def feed_forward_relu(x, w1, b1, w2, b2, p: float):
    """Dropout(ReLU(x W1^T + b1)) W2^T + b2 for x (..., D), weights as nn.Linear stores them: W1 (F, D), W2 (D, F)."""
    return _FeedForwardReLU.apply(x, w1, b1, w2, b2, p)
