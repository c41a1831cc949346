"""Dropout (Srivastava et al. 2014; Section 5.4 of the paper), with a faster mask on the CPU.

torch's CPU dropout draws one random number per element, which costs as much as a matrix product in a
small model. Here the CPU mask is built from random bytes instead: eight keep/drop decisions per 64-bit
draw, each keeping an element with probability 1 - round(256 p) / 256 (p rounded to a multiple of 1/256,
e.g. 0.1 -> 0.1016), and scaling what is kept by the inverse of that. On other devices F.dropout is used.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def keep_mask(shape, p: float, device):
    """The elements dropout keeps as a uint8 tensor of 0 (drop) and 1 (keep), and the scale for what it keeps.

    On the CPU, from random bytes, p rounded to a multiple of 1/256; elsewhere from uniform draws. (uint8,
    not bool: on the CPU, comparisons into bool and arithmetic with a bool operand run several times slower.)
    """
    threshold = round(256 * p)
    if torch.device(device).type == "cpu" and 0 < threshold < 256:
        numel = math.prod(shape)
        draws = torch.empty((numel + 7) // 8, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
        keep = torch.empty(shape, dtype=torch.uint8, device=device)
        torch.ge(draws.view(torch.uint8)[:numel].view(shape), threshold, out=keep)
        return keep, 256.0 / (256 - threshold)
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


def dropout(x, p: float, training: bool):
    """Zero each element with probability p and scale the rest by 1 / (1 - p), in training only."""
    if not training or p == 0.0:
        return x
    if x.device.type == "cpu" and 0 < round(256 * p) < 256:
        return _MaskDropout.apply(x, p)
    return F.dropout(x, p, training=True)


class Dropout(nn.Module):
    """nn.Dropout's interface, with the CPU mask above."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"
