"""A drop-in for PositionwiseFeedForward (ReLU) whose CPU training runs as one function with a hand-written backward.

It computes Equation (2) with dropout on the hidden activations, FFN(x) = Dropout(max(0, x W1 + b1)) W2 + b2,
as the reference module does (a test holds them to the same outputs and gradients), but the (B*L, d_ff)
hidden tensor, the largest in a layer, is walked over, copied and allocated as few times as possible:
- ReLU and dropout are applied in place to x W1 + b1; the result is zero exactly where either zeroed it,
  so the backward pass reads its mask from that result (no mask is kept) and applies it in place.
- Dropout's 1 / (1 - p) is applied to the (B*L, D) output of the second product, not to the d_ff-wide h.
Autograd would do six passes over that tensor and allocate four more like it on top of the two matrix
products; this does three passes and allocates none (on a CPU, a fresh tensor's page faults cost more
than a pass over it). Under autocast the products run in the autocast dtype, as nn.Linear's would.
"""

import torch

from ..model.layers import PositionwiseFeedForward
from .dropout import keep_mask
from .linear import matmul_t
from .support import assert_close_in, check, compute_dtype, refuse_second_derivative, works


class _FeedForwardReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, p: float):
        lead, D = x.shape[:-1], x.shape[-1]
        device, dtype = x.device.type, compute_dtype(x)
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
        refuse_second_derivative()
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


def feed_forward_relu(x, w1, b1, w2, b2, p: float):
    """Dropout(ReLU(x W1^T + b1)) W2^T + b2 for x (..., D), weights as nn.Linear stores them: W1 (F, D), W2 (D, F)."""
    return _FeedForwardReLU.apply(x, w1, b1, w2, b2, p)



@check("fused_feed_forward", "the fused CPU feed-forward", devices=("cpu",))
def _check_fused_feed_forward(device, dtype):
    reference = PositionwiseFeedForward(16, 48, 0.0).train()
    x = torch.randn(2, 5, 16, requires_grad=True)
    results = []
    for forward in (lambda t: FusedFeedForward.fused(reference, t), reference):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            y = forward(x)
        results.append([y, *torch.autograd.grad((y.float() ** 2).sum(), [x, *reference.parameters()])])
    assert_close_in(dtype, results[0], results[1], "feed-forward outputs and gradients")


class FusedFeedForward(PositionwiseFeedForward):
    """The ReLU feed-forward as one autograd function when training on the CPU; the reference forward elsewhere."""

    def fused(self, x):
        return feed_forward_relu(x, self.w1.weight, self.w1.bias, self.w2.weight, self.w2.bias, self.dropout.p)

    def forward(self, x):
        if (self.activation == "relu" and self.training and torch.is_grad_enabled() and x.device.type == "cpu"
                and not torch.compiler.is_compiling() and works("fused_feed_forward", "cpu", compute_dtype(x))):
            return self.fused(x)
        return super().forward(x)
