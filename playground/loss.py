"""The training loss: cross-entropy with label smoothing (Section 5.4), over real target tokens only.

With smoothing eps over V classes, the target distribution puts 1 - eps + eps/V on the right token and
eps/V on every other, so for logits x with log-sum-exp L the loss of one token t is

    L - (1 - eps) x_t - (eps / V) sum_j x_j        and its gradient    softmax(x) - (1 - eps) onehot(t) - eps / V

`sequence_loss` computes exactly what F.cross_entropy(logits, target, ignore_index=PAD,
label_smoothing=eps) computes (a test holds them together), but in one pass over the logits each way,
a block of rows at a time in fp32 whatever the logits' dtype. torch's version materialises log-softmax,
its fp32 copy under autocast, a dense zero-filled gradient for the target term and another for the
smoothing term: with a 16k vocabulary that was 15% of a CPU training step.
"""

import torch

from .model import PAD

BLOCK_ELEMENTS = 1 << 20  # logits per block on the CPU: 4 MB of fp32, which stays in cache while it is worked on


class _SmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, smoothing: float, ignore_index: int):
        N, V = logits.shape
        keep = target != ignore_index  # (N,) rows that count
        count = keep.sum().clamp(min=1)  # a tensor: no host synchronisation
        lse = torch.empty(N, dtype=torch.float32, device=logits.device)  # (N,) log-sum-exp of each row
        per_token = torch.empty(N, dtype=torch.float32, device=logits.device)
        index = torch.where(keep, target, 0)[:, None]  # (N, 1) ignored rows gather a harmless column
        for start, stop in _blocks(logits):
            x = logits[start:stop].float()  # (n, V)
            lse[start:stop] = torch.logsumexp(x, dim=-1)
            picked = x.gather(1, index[start:stop]).squeeze(1)  # (n,) logit of the right token
            per_token[start:stop] = lse[start:stop] - (1 - smoothing) * picked - (smoothing / V) * x.sum(-1)
        ctx.save_for_backward(logits, index, lse, keep, count)
        ctx.smoothing = smoothing
        return torch.where(keep, per_token, 0.0).sum() / count

    @staticmethod
    def backward(ctx, grad_loss):
        logits, index, lse, keep, count = ctx.saved_tensors
        eps, V = ctx.smoothing, logits.size(1)
        row_scale = (keep * (grad_loss / count))[:, None]  # (N, 1): zero for ignored rows
        grad = torch.empty_like(logits)
        fp32 = logits.dtype == torch.float32
        for start, stop in _blocks(logits):
            # (n, V) softmax, written straight into the gradient when it is fp32, else into an fp32 block
            g = torch.sub(logits[start:stop].float(), lse[start:stop, None], out=grad[start:stop] if fp32 else None)
            g.exp_().sub_(eps / V).scatter_add_(1, index[start:stop], g.new_full((stop - start, 1), -(1 - eps)))
            g.mul_(row_scale[start:stop])
            if not fp32:
                grad[start:stop] = g
        return grad, None, None, None


def _blocks(logits):
    """Row ranges to work on: cache-sized blocks on the CPU, the whole tensor at once elsewhere."""
    N, V = logits.shape
    rows = max(1, BLOCK_ELEMENTS // V) if logits.device.type == "cpu" else max(N, 1)
    return [(start, min(start + rows, N)) for start in range(0, N, rows)]


def sequence_loss(logits, tgt_out, label_smoothing):
    """Cross-entropy of logits (B, T, V) against tgt_out (B, T), PAD ignored, label-smoothed, computed in fp32."""
    return _SmoothedCrossEntropy.apply(logits.flatten(0, 1), tgt_out.flatten(), float(label_smoothing), PAD)
