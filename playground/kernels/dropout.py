"""A drop-in for the model's Dropout whose CPU mask is made from random bytes instead of one random float each.

torch's CPU dropout draws one random float per element, which costs as much as a matrix product in a small
model: the CPU's random numbers come from one serial generator. Here an element is dropped when a 16-bit
number is below round(65536 p), so p is rounded to a multiple of 1/65536 (within 1e-5 of the one asked for),
but the 16 bits are not all its own: its high byte is, and its low byte is shared by the SHARED = 16 elements
of its column. That is 1 + 1/16 random bytes an element instead of 2. The low byte decides only when the
element's own byte equals the threshold's high byte, 1 time in 256, so two elements that share it drop
independently except then: their covariance is at most (1/256)^2 / 4 = 3.8e-6, against a variance of
p (1 - p) (0.09 at p = 0.1). What is kept is scaled by the inverse of the exact keep probability. The mask is
uint8 0/1, not bool: on the CPU, arithmetic with a bool operand runs several times slower. On other devices,
and where the check fails, it is the reference `Dropout`.
"""

import math

import torch

from ..model.dropout import Dropout
from .support import check, works

LEVELS = 1 << 16  # p is rounded to a multiple of 1 / LEVELS
SHARED = 16  # elements that share one low byte


def keep_mask(shape, p: float, device):
    """The elements dropout keeps as a uint8 tensor of 0 (drop) and 1 (keep), and the scale for what it keeps.

    On the CPU, from random bytes as above, p rounded to a multiple of 1/65536; elsewhere from uniform draws.
    """
    threshold = round(LEVELS * p)
    high, low = divmod(threshold, 256)
    if torch.device(device).type == "cpu" and 0 < threshold and high < 255:  # (high + 1 must fit a byte)
        numel = math.prod(shape)
        columns = -(-numel // SHARED)
        words = -(-(SHARED + 1) * columns // 8)
        draws = torch.empty(words, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1).view(torch.uint8)
        own = draws[: SHARED * columns].view(SHARED, columns)  # (SHARED, columns) each element's high byte
        shared = draws[SHARED * columns : (SHARED + 1) * columns]  # (columns,) each column's low byte
        # dropped when own * 256 + shared < threshold: own below high, or equal to it with shared below low;
        # so kept when own >= high + (shared < low). Comparisons write bool, viewed as uint8 without a copy.
        bar = torch.lt(shared, low).view(torch.uint8).add_(high)  # (columns,)
        keep = torch.ge(own, bar).view(torch.uint8).view(-1)[:numel].view(shape)
        return keep, LEVELS / (LEVELS - threshold)
    return (torch.rand(shape, device=device) >= p).to(torch.uint8), 1.0 / (1.0 - p) if p < 1 else 0.0


class _MaskDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p: float):
        keep, scale = keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return (x * scale).mul_(keep)  # one new tensor; multiplying by 0/1 in place

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return (grad * ctx.scale).mul_(keep), None


def mask_dropout(x, p: float):
    """Training-mode dropout of x with the mask above."""
    return _MaskDropout.apply(x, p)


@check("mask_dropout", "the random-byte-mask dropout", devices=("cpu",))  # elsewhere the reference is as fast
def _check_mask_dropout(device, dtype):
    x = torch.randn(1 << 16, dtype=dtype, requires_grad=True)
    y = mask_dropout(x, 0.25)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    kept = y != 0
    dropped = 1 - kept.float().mean().item()
    assert abs(dropped - 0.25) < 0.01, f"dropped {dropped:.4f} of the elements, not 0.25"
    torch.testing.assert_close(y[kept], (x[kept] / 0.75).to(dtype))
    torch.testing.assert_close(grad, kept.to(dtype) / 0.75)


class MaskDropout(Dropout):
    """Dropout with the CPU mask above in training, where it passed its check; the reference Dropout elsewhere."""

    def forward(self, x):
        if (self.training and self.p > 0 and x.device.type == "cpu" and not torch.compiler.is_compiling()
                and works("mask_dropout", "cpu", x.dtype)):
            return mask_dropout(x, self.p)
        return super().forward(x)
