"""The training loss is torch's label-smoothed cross-entropy: the model's as written, and the fast kernel's, computed
block by block without its temporaries."""

import pytest
import torch
import torch.nn.functional as F

from playground.data import PAD
from playground.kernels import loss as loss_module
from playground.kernels.loss import blockwise_sequence_loss
from playground.model import sequence_loss as model_sequence_loss


def sequence_loss(logits, target, smoothing):
    return blockwise_sequence_loss(logits, target, smoothing, PAD)


def reference_loss(logits, target, smoothing):
    return F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=PAD, label_smoothing=smoothing)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blockwise_loss_and_its_gradient_equal_torch_cross_entropy_with_padding(dtype, smoothing, monkeypatch):
    monkeypatch.setattr(loss_module, "BLOCK_ELEMENTS", 3 * 50)  # blocks of 3 rows: the last one is short
    torch.manual_seed(0)
    logits = (torch.randn(4, 7, 50) * 3).to(dtype).requires_grad_()
    target = torch.randint(4, 50, (4, 7))
    target[0, 5:] = PAD
    target[2, 1:] = PAD

    ours = sequence_loss(logits, target, smoothing)
    (grad_ours,) = torch.autograd.grad(ours * 2.5, logits)
    theirs = reference_loss(logits, target, smoothing)
    (grad_theirs,) = torch.autograd.grad(theirs * 2.5, logits)

    assert ours.dtype == torch.float32 and grad_ours.dtype == dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    # in bf16 the gradient is rounded once more (stored in bf16, then scaled by d(loss)): one bf16 step apart
    rtol = 1e-5 if dtype == torch.float32 else 2**-7
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=rtol, atol=1e-6)
    assert grad_ours[2, 1:].abs().sum() == 0  # padded positions get no gradient


def test_blockwise_loss_is_the_references_for_large_logits_and_for_masked_tokens():
    """The loss is computed relative to each row's largest logit, as log-softmax is: logits near 3e4 lose nothing
    to cancellation, and a token masked to -inf costs nothing without smoothing (infinity with it), as in torch;
    a PAD row adds 0 whatever its logits."""
    torch.manual_seed(0)
    target = torch.randint(4, 100, (4, 5))
    target[3, 2:] = PAD
    big = torch.randn(4, 5, 100) * 3 + 3e4
    exact = F.cross_entropy(big.double().flatten(0, 1), target.flatten(), ignore_index=PAD, label_smoothing=0.1)
    torch.testing.assert_close(sequence_loss(big, target, 0.1).double(), exact, rtol=2e-6, atol=0)
    masked = torch.randn(4, 5, 100)
    masked[..., 50:60] = float("-inf")  # tokens a caller forbids: never the target here
    target = target.clamp(max=49)
    for smoothing in (0.0, 0.1):
        ours, theirs = sequence_loss(masked, target, smoothing), reference_loss(masked, target, smoothing)
        assert torch.isfinite(ours) if smoothing == 0 else ours == float("inf")
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    masked[3, 2:, 70] = float("-inf")  # only in PAD rows: they count for nothing
    masked[..., 50:60] = 0.0
    torch.testing.assert_close(sequence_loss(masked, target, 0.1), reference_loss(masked, target, 0.1),
                               rtol=1e-5, atol=1e-6)


def test_sequence_loss_leaves_fp32_logits_unchanged():
    logits = torch.randn(2, 3, 11, requires_grad=True)
    before = logits.detach().clone()
    sequence_loss(logits, torch.randint(1, 11, (2, 3)), 0.1).backward()
    assert torch.equal(logits.detach(), before)


def test_backpropagating_the_loss_twice_is_refused_rather_than_scaling_the_gradient_twice():
    logits = torch.randn(2, 3, 11, requires_grad=True)
    loss = sequence_loss(logits, torch.randint(1, 11, (2, 3)), 0.1)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="cannot be backpropagated twice"):
        loss.backward()


def test_fp16_logits_under_a_gradient_scale_of_65536_get_the_gradient_torch_gives():
    torch.manual_seed(0)
    logits = torch.randn(2, 64, 1000).half().requires_grad_()  # most softmax entries are ~1e-3 / 128 tokens
    target = torch.randint(4, 1000, (2, 64))
    (grad_ours,) = torch.autograd.grad(sequence_loss(logits, target, 0.1) * 65536.0, logits)
    (grad_theirs,) = torch.autograd.grad(reference_loss(logits, target, 0.1) * 65536.0, logits)
    assert torch.isfinite(grad_ours).all() and (grad_ours != 0).float().mean() > 0.99  # neither inf nor underflow
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-3, atol=1e-4)


def test_without_gradients_the_loss_is_still_computed():
    logits = torch.randn(2, 3, 11, requires_grad=True)
    target = torch.randint(1, 11, (2, 3))
    with torch.no_grad():
        loss = sequence_loss(logits, target, 0.1)
    torch.testing.assert_close(loss, reference_loss(logits, target, 0.1).detach())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_models_loss_is_the_mean_over_real_tokens_and_zero_for_padding_only(smoothing):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 17, requires_grad=True)
    target = torch.randint(4, 17, (3, 5))
    target[1, 2:] = PAD
    torch.testing.assert_close(model_sequence_loss(logits, target, smoothing, PAD), reference_loss(logits, target, smoothing))
    assert model_sequence_loss(logits, torch.full_like(target, PAD), smoothing, PAD).item() == 0.0  # not 0/0
