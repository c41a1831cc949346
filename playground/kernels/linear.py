"""A drop-in for nn.Linear whose CPU products go to oneDNN rather than MKL, where that is the faster of the two.

torch multiplies fp32 matrices on the CPU with MKL. On an AMD EPYC (Zen 4) with torch 2.13, oneDNN, which
torch also ships, computes x W^T + b 10-40% faster for this model's shapes (the bias is added inside the
product instead of copied into the output first), and g W (the gradient of the input) 5-20% faster; for
the gradient of the weight, g^T x, MKL is as fast or faster. So `OneDNNLinear` computes the first two with oneDNN
and the third with MKL, on the CPU in fp32; everywhere else (CUDA, autocast, a torch without oneDNN or with it switched
off) it is nn.Linear. The numbers differ from MKL's only by float rounding (a test holds them together). One exception
while training: an output of 16 MB or more (the logits) is MKL's product written into memory kept from the
last step (memory.py), since oneDNN's operator only writes into fresh memory, whose page faults cost more
(d256's 2,048 x 256 x 8,000 product: 90 ms into fresh memory through oneDNN, 64 ms into kept memory through MKL).

oneDNN lays each weight out in a blocked format of its own before a product, on every call. Training amortises
that over thousands of rows; a decoding step, one token per sentence, does not, so while a decoding runs its
weights can be laid out once (`pack_weight`) and used from there (`packed_weights`, playground/kernels/transformer.py).
"""

import contextlib
import contextvars

import torch
import torch.nn.functional as F
from torch import nn

from . import memory
from .support import assert_close_in, check, works


def _onednn_linear(x, w, bias=None):
    """x W^T + bias through oneDNN's fused linear operator (a private torch op: only here, behind its check)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")


def _require_onednn():
    """Raise where this torch has no oneDNN, or where it is switched off (torch.backends.mkldnn.enabled = False, as
    torch's own operations take it): then nn.Linear runs."""
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("this torch has no oneDNN")
    if not torch.backends.mkldnn.enabled:
        raise RuntimeError("oneDNN is switched off (torch.backends.mkldnn.enabled is False)")


@check("onednn_linear", "the oneDNN linear layer", devices=("cpu",))
def _check_onednn_linear(device, dtype):
    _require_onednn()
    x, w, b = (torch.randn(*shape).to(dtype) for shape in ((6, 24), (40, 24), (40,)))
    with torch.autocast("cpu", enabled=False):
        assert_close_in(dtype, [_onednn_linear(x, w, b), _onednn_linear(x, w)], [F.linear(x, w, b), F.linear(x, w)],
                        "x W^T + b")


def pack_weight(w, rows: int):
    """w (N, K) laid out in oneDNN's own format for products of about `rows` rows, once (a private torch op)."""
    return torch.ops.mkldnn._reorder_linear_weight(w.detach(), rows)


@check("packed_linear", "the oneDNN linear layer with weights laid out once", devices=("cpu",))
def _check_packed_linear(device, dtype):
    """Packed weights are used in fp32 only (decoding without autocast): checked in fp32 whatever a run's dtype."""
    _require_onednn()
    x, w, b = (torch.randn(*shape) for shape in ((6, 1, 24), (40, 24), (40,)))
    packed = pack_weight(w, 6)
    with torch.autocast("cpu", enabled=False):
        assert_close_in(torch.float32, [_onednn_linear(x, packed, b), _onednn_linear(x, packed)],
                        [F.linear(x, w, b), F.linear(x, w)], "x W^T + b with W laid out once")


_PACKED = contextvars.ContextVar("packed_linear_weights", default=None)  # {OneDNNLinear: its packed weight}


@contextlib.contextmanager
def packed_weights(packs: dict):
    """Within: each OneDNNLinear in `packs` (module -> pack_weight(module.weight)) multiplies by its packed weight."""
    token = _PACKED.set(packs)
    try:
        yield
    finally:
        _PACKED.reset(token)


def matmul_t(x, w, bias=None):
    """x (..., K) @ w^T + bias for w (N, K): oneDNN on the CPU where it passed its check, else F.linear."""
    # oneDNN's operator has no derivative of its own: where autograd is recording (a backward pass taken with
    # create_graph=True, for a second derivative), the differentiable torch op computes it instead
    tracked = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w, bias))
    if (x.device.type == "cpu" and not tracked and not torch.compiler.is_compiling()
            and works("onednn_linear", "cpu", x.dtype)):
        return _onednn_linear(x, w, bias)
    return F.linear(x, w, bias)


def _big_product(x, w, bias):
    """x (..., K) @ w^T + bias by MKL into memory kept from the last step (memory.py) where the result is big
    enough to be worth it (the output layer's logits while training), else None."""
    shape = (*x.shape[:-1], w.size(0))
    if not x.is_contiguous() or not memory.kept(shape, x.dtype, x.device):
        return None  # oneDNN's fresh output is as fast as MKL's
    out = memory.reused_empty(shape, x.dtype, x.device)
    torch.mm(x.view(-1, x.size(-1)), w.t(), out=out.view(-1, w.size(0)))  # (M, N)
    return out if bias is None else out.add_(bias)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out = _big_product(x, weight, bias)
        return matmul_t(x, weight, bias) if out is None else out  # (..., N)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = matmul_t(grad, weight.t()) if ctx.needs_input_grad[0] else None  # (..., K) = grad W
        grad_2d = grad.reshape(-1, grad.size(-1))  # (M, N)
        grad_w = grad_2d.t() @ x.reshape(-1, x.size(-1)) if ctx.needs_input_grad[1] else None  # (N, K), MKL
        grad_b = grad_2d.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class OneDNNLinear(nn.Linear):
    """nn.Linear (same parameters, same state_dict) whose fp32 CPU products go through oneDNN (see above)."""

    def forward(self, x):
        # first: torch.compile cannot trace the packs' ContextVar, and would break its graph at every linear layer
        if torch.compiler.is_compiling():
            return super().forward(x)
        packs = _PACKED.get()
        if packs is not None and self in packs:  # inside a decoding step (FastTransformer.decode): no grad, fp32
            return _onednn_linear(x, packs[self], self.bias)
        if (x.device.type == "cpu" and x.dim() >= 2 and x.dtype == self.weight.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu") and works("onednn_linear", "cpu", torch.float32)):
            if torch.is_grad_enabled():
                return _Linear.apply(x, self.weight, self.bias)
            return matmul_t(x, self.weight, self.bias)
        return super().forward(x)
