"""A drop-in for the model's Dropout whose CPU mask is made from random 16-bit draws instead of one float each.

torch's CPU dropout draws one random float per element, which costs as much as a matrix product in a small
model. Here each 64-bit random draw gives four keep/drop decisions: an element is kept when its 16-bit
draw is at least round(65536 p) (so p is rounded to a multiple of 1/65536, within 1e-5 of the one asked
for), and what is kept is scaled by the inverse of the exact keep probability. The mask is uint8 0/1, not
bool: on the CPU, arithmetic with a bool operand runs several times slower. On other devices, and where
the check fails, it is the reference `Dropout`.
"""

import math

import torch

from ..model.dropout import Dropout
from .support import check, works

LEVELS = 1 << 16  # p is rounded to a multiple of 1 / LEVELS


def keep_mask(shape, p: float, device):
    """The elements dropout keeps as a uint8 tensor of 0 (drop) and 1 (keep), and the scale for what it keeps.

    On the CPU, from 16-bit random draws, p rounded to a multiple of 1/65536; elsewhere from uniform draws.
    """
    threshold = round(LEVELS * p)
    if torch.device(device).type == "cpu" and 0 < threshold < LEVELS:
        numel = math.prod(shape)
        draws = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
        # int16 draws are uniform on [-32768, 32767]: one of at least threshold - 32768 has probability 1 - p.
        # The comparison writes bool, viewed as uint8 without a copy (asking for uint8 output converts: 2x slower).
        keep = torch.ge(draws.view(torch.int16)[:numel].view(shape), threshold - LEVELS // 2).view(torch.uint8)
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
    """Training-mode dropout of x with the 16-bit mask above."""
    return _MaskDropout.apply(x, p)


@check("mask_dropout", "the 16-bit-mask dropout")
def _check_mask_dropout(device, dtype):
    if device.type != "cpu":
        raise RuntimeError(f"the 16-bit mask is for the CPU; on {device.type} the reference dropout is as fast")
    x = torch.randn(1 << 16, dtype=dtype, requires_grad=True)
    y = mask_dropout(x, 0.25)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    kept = y != 0
    dropped = 1 - kept.float().mean().item()
    assert abs(dropped - 0.25) < 0.01, f"dropped {dropped:.4f} of the elements, not 0.25"
    torch.testing.assert_close(y[kept], (x[kept] / 0.75).to(dtype))
    torch.testing.assert_close(grad, kept.to(dtype) / 0.75)


class MaskDropout(Dropout):
    """Dropout with the 16-bit CPU mask in training, where it passed its check; the reference Dropout elsewhere."""

    def forward(self, x):
        if (self.training and self.p > 0 and x.device.type == "cpu" and not torch.compiler.is_compiling()
                and works("mask_dropout", "cpu", x.dtype)):
            return mask_dropout(x, self.p)
        return super().forward(x)
