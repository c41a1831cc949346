"""The hand-fused CPU feed-forward computes what the readable PositionwiseFeedForward computes."""

import pytest
import torch

from playground.model.layers import PositionwiseFeedForward


def readable_feed_forward(ff, x):
    """Equation (2) with dropout, step by step: what layers.py does off the fused path."""
    return ff.w2(ff.dropout(torch.relu(ff.w1(x))))


def outputs_and_gradients(ff, x, forward, autocast):
    torch.manual_seed(1)  # the same dropout mask for both: they draw the same random bytes
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = forward(ff, x)
    grads = torch.autograd.grad((y.float() ** 2).sum(), [x, *ff.parameters()])
    return [y, *grads]


@pytest.mark.parametrize("p", [0.0, 0.1])
def test_fused_feed_forward_gives_the_readable_outputs_and_gradients_in_fp32(p):
    torch.manual_seed(0)
    ff = PositionwiseFeedForward(16, 64, p).train()
    x = torch.randn(3, 5, 16, requires_grad=True)
    fused = outputs_and_gradients(ff, x, lambda m, t: m(t), autocast=False)
    readable = outputs_and_gradients(ff, x, readable_feed_forward, autocast=False)
    assert fused[0].shape == (3, 5, 16)
    for ours, theirs in zip(fused, readable):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_fused_feed_forward_under_bf16_autocast_is_as_close_to_fp32_as_the_readable_one():
    torch.manual_seed(0)
    ff = PositionwiseFeedForward(32, 128, 0.1).train()
    x = torch.randn(4, 6, 32, requires_grad=True)
    exact = outputs_and_gradients(ff, x, readable_feed_forward, autocast=False)
    fused = outputs_and_gradients(ff, x, lambda m, t: m(t), autocast=True)
    readable = outputs_and_gradients(ff, x, readable_feed_forward, autocast=True)
    assert fused[0].dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in fused[1:])
    for ours, theirs, reference in zip(fused, readable, exact):
        error = lambda t: ((t.float() - reference).norm() / reference.norm()).item()
        assert error(ours) < max(2 * error(theirs), 0.01)
