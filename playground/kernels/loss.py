"""A drop-in for the model's label-smoothed loss (Section 5.4): one blockwise pass that also writes the gradient.

With smoothing eps over V classes, the target distribution puts 1 - eps + eps/V on the right token and
eps/V on every other, so for logits x with log-sum-exp L the loss of one token t is

    L - (1 - eps) x_t - (eps / V) sum_j x_j        and its gradient    softmax(x) - (1 - eps) onehot(t) - eps / V

`blockwise_sequence_loss` computes what the reference `playground/model/loss.py` computes (a test holds
them together; a batch with no real target gives 0, not NaN), but in one pass over the logits, a block of
rows at a time in fp32 whatever the logits' dtype, writing the gradient in the same pass. torch's
version materialises log-softmax, its fp32 copy under autocast, a dense zero-filled gradient for the
target term and another for the smoothing term: with a 16k vocabulary that was 15% of a CPU training
step (1024 x 16000 logits, fp32: 90 ms there, 35 ms here; bf16: 120 ms and 19 ms).
"""

import torch

from ..model import loss as model_loss
from . import memory
from .support import assert_close_in, check

BLOCK_ELEMENTS = 1 << 20  # logits per block on the CPU: 4 MB of fp32, which stays in cache while it is worked on


class _SmoothedCrossEntropy(torch.autograd.Function):
    """The loss, and in the same pass over each block of logits the gradient for d(loss) = 1 (softmax is at hand
    then); the backward pass only scales that gradient by the incoming one."""

    @staticmethod
    def forward(ctx, logits, target, smoothing: float, ignore_index: int, with_grad: bool):
        N, V = logits.shape
        keep = target != ignore_index  # (N,) rows that count
        count = keep.sum().clamp(min=1)  # a tensor: no host synchronisation (no counted row: the loss is 0)
        row_scale = (keep / count)[:, None]  # (N, 1): each counted row's share of the mean, 0 for ignored rows
        per_token = torch.empty(N, dtype=torch.float32, device=logits.device)
        index = torch.where(keep, target, 0)[:, None]  # (N, 1) ignored rows gather a harmless column
        # the gradient is kept in the logits' dtype for fp32 and bf16 (fp32's range), in fp32 for fp16: at d(loss) = 1
        # most of it would underflow fp16, which is what a gradient scaler is there to prevent
        grad_dtype = torch.float32 if logits.dtype == torch.float16 else logits.dtype
        grad = memory.reused_empty((N, V), grad_dtype, logits.device) if with_grad else None  # (N, V), no fresh pages
        blocks = _blocks(logits)
        # one fp32 block to work in, reused: a fresh one per block cost a page fault per 4 kB each time on a CPU
        direct = grad is not None and grad_dtype == torch.float32  # exp(x - top) written straight into the gradient
        scratch = None if direct and logits.dtype == torch.float32 else torch.empty(
            blocks[0][1] - blocks[0][0] if blocks else 0, V, dtype=torch.float32, device=logits.device)
        for start, stop in blocks:
            x = logits[start:stop]  # (n, V)
            if x.dtype != torch.float32:
                x = scratch[: stop - start].copy_(x)  # our own fp32 copy, free to overwrite
            top = x.amax(-1, keepdim=True)  # (n, 1)
            # everything relative to the row's largest logit: the loss is log(sum_e) - (1 - eps) (x_t - top)
            # - (eps / V) sum_j (x_j - top), the top cancelling, as in log-softmax (no large terms that cancel)
            shifted = torch.sub(x, top, out=grad[start:stop] if direct else scratch[: stop - start])  # (n, V)
            picked = shifted.gather(1, index[start:stop])  # (n, 1) the right token's, before exp overwrites it
            loss = -(1 - smoothing) * picked
            if smoothing:  # only then: a logit of -inf (a masked token) costs eps/V of infinity, as in torch
                loss -= (smoothing / V) * shifted.sum(-1, keepdim=True)
            e = shifted.exp_()
            sum_e = e.sum(-1, keepdim=True)  # (n, 1)
            per_token[start:stop] = (sum_e.log() + loss).squeeze(1)
            if grad is not None:  # softmax - (1 - eps) onehot - eps / V, times the row's share
                e.div_(sum_e).sub_(smoothing / V).scatter_add_(1, index[start:stop], e.new_full((stop - start, 1),
                                                                                            -(1 - smoothing)))
                e.mul_(row_scale[start:stop])
                if grad_dtype != torch.float32:
                    grad[start:stop] = e
        ctx.save_for_backward(grad)
        ctx.logits_dtype, ctx.used = logits.dtype, False
        return torch.where(keep, per_token, 0.0).mul_(row_scale.squeeze(1)).sum()  # an ignored row adds 0, never nan

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.used:
            raise RuntimeError("sequence_loss scales its stored gradient in place: it cannot be backpropagated twice")
        ctx.used = True
        (grad,) = ctx.saved_tensors
        if grad.dtype != ctx.logits_dtype:  # fp16 logits: scale (by a gradient scaler's factor) in fp32, then round
            return (grad * grad_loss).to(ctx.logits_dtype), None, None, None, None
        return grad.mul_(grad_loss.to(grad.dtype)), None, None, None, None


def _blocks(logits):
    """Row ranges to work on: cache-sized blocks on the CPU, the whole tensor at once elsewhere."""
    N, V = logits.shape
    rows = max(1, BLOCK_ELEMENTS // V) if logits.device.type == "cpu" else max(N, 1)
    return [(start, min(start + rows, N)) for start in range(0, N, rows)]


def blockwise_sequence_loss(logits, tgt_out, label_smoothing: float, pad_id: int):
    """Cross-entropy of logits (B, T, V) against tgt_out (B, T), PAD ignored, label-smoothed, computed in fp32."""
    with_grad = torch.is_grad_enabled() and logits.requires_grad
    return _SmoothedCrossEntropy.apply(logits.flatten(0, 1), tgt_out.flatten(), float(label_smoothing), pad_id,
                                       with_grad)


@check("blockwise_loss", "the blockwise loss")
def _check_blockwise_loss(device, dtype):
    logits = (torch.randn(3, 4, 50, device=device) * 3).to(dtype).requires_grad_()
    target = torch.randint(1, 50, (3, 4), device=device)
    target[1, 2:] = 0
    results = []
    for loss_fn in (blockwise_sequence_loss, model_loss.sequence_loss):  # the reference as it is now
        loss = loss_fn(logits, target, 0.1, 0)
        results.append([loss, *torch.autograd.grad(loss * 2.0, logits)])
    assert_close_in(dtype, results[0], results[1], "loss and gradient")
