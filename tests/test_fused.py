"""The hand-fused CPU feed-forward, attention and linear layers compute what the readable modules compute."""

import pytest
import torch
from torch import nn

from playground.model import PAD
from playground.model.attention import MultiHeadAttention, causal_mask, padding_mask
from playground.model.layers import PositionwiseFeedForward
from playground.model.linear import Linear, onednn_available


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


def attention_outputs_and_gradients(attn, x, memory, mask, readable, autocast):
    """MultiHeadAttention's output and gradients; readable=True takes the explicit path (record_weights)."""
    attn.record_weights = readable
    torch.manual_seed(1)  # the same dropout mask for both: they draw the same random bytes
    inputs = [x] if memory is None else [x, memory]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = attn(x, memory=memory, mask=mask)
    grads = torch.autograd.grad((y.float() ** 2).sum(), [*inputs, *attn.parameters()])
    return [y, *grads]


def attention_case(self_attention, p):
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, p, self_attention=self_attention).train()
    x = torch.randn(3, 5, 32, requires_grad=True)
    if self_attention:
        return attn, x, None, causal_mask(5)
    src = torch.tensor([[5] * 7, [5] * 4 + [PAD] * 3, [5] * 2 + [PAD] * 5])
    return attn, x, torch.randn(3, 7, 32, requires_grad=True), padding_mask(src, PAD)


@pytest.mark.parametrize("self_attention", [True, False], ids=["self", "cross"])
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_fused_attention_gives_the_readable_outputs_and_gradients_in_fp32(self_attention, p):
    attn, x, memory, mask = attention_case(self_attention, p)
    fused = attention_outputs_and_gradients(attn, x, memory, mask, readable=False, autocast=False)
    readable = attention_outputs_and_gradients(attn, x, memory, mask, readable=True, autocast=False)
    assert fused[0].shape == (3, 5, 32)
    for ours, theirs in zip(fused, readable):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("self_attention", [True, False], ids=["self", "cross"])
def test_fused_attention_under_bf16_autocast_is_as_close_to_fp32_as_the_readable_one(self_attention):
    attn, x, memory, mask = attention_case(self_attention, 0.1)
    exact = attention_outputs_and_gradients(attn, x, memory, mask, readable=True, autocast=False)
    fused = attention_outputs_and_gradients(attn, x, memory, mask, readable=False, autocast=True)
    readable = attention_outputs_and_gradients(attn, x, memory, mask, readable=True, autocast=True)
    assert fused[0].dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in fused[1:])
    for ours, theirs, reference in zip(fused, readable, exact):
        error = lambda t: ((t.float() - reference).norm() / reference.norm()).item()
        assert error(ours) < max(2 * error(theirs), 0.01)


def test_fused_attention_keeps_padded_source_positions_out_of_the_gradient():
    attn, x, memory, mask = attention_case(self_attention=False, p=0.1)
    grad_memory = attention_outputs_and_gradients(attn, x, memory, mask, readable=False, autocast=False)[2]
    assert grad_memory[1, 4:].abs().max() == 0 and grad_memory[2, 2:].abs().max() == 0
    assert grad_memory[0].abs().min() > 0


def test_linear_through_onednn_gives_nn_linear_outputs_and_gradients():
    torch.manual_seed(0)
    ours, theirs = Linear(24, 40), nn.Linear(24, 40)
    theirs.load_state_dict(ours.state_dict())  # the same parameters under the same names
    x = torch.randn(3, 5, 24, requires_grad=True)
    results = []
    for layer in (ours, theirs):
        y = layer(x)
        results.append([y, *torch.autograd.grad((y**2).sum(), [x, *layer.parameters()])])
    assert onednn_available() == torch.backends.mkldnn.is_available()  # this torch ships it: the path is taken
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast it is nn.Linear itself
        assert ours(x).dtype == torch.bfloat16


def test_fused_attention_and_linear_take_any_incoming_gradient_layout_and_a_single_vector():
    attn, x, memory, mask = attention_case(self_attention=True, p=0.1)
    attn(x, mask=mask).sum().backward()  # the incoming gradient is one value broadcast: a stride-0 tensor
    assert x.grad.shape == x.shape and torch.isfinite(x.grad).all()
    x.grad = None
    weights = torch.randn(3, 32, 5)
    (attn(x, mask=mask).transpose(1, 2) * weights).sum().backward()  # a transposed, non-contiguous gradient
    assert torch.isfinite(x.grad).all()
    layer = Linear(4, 3, bias=False)
    vector = torch.randn(4, requires_grad=True)
    layer(vector).sum().backward()  # nn.Linear takes a single (K,) vector too
    torch.testing.assert_close(vector.grad, layer.weight.sum(0).detach())


def test_a_second_derivative_through_linear_is_nn_linears():
    torch.manual_seed(0)
    ours, theirs = Linear(6, 4), nn.Linear(6, 4)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6, requires_grad=True)
    second = []
    for layer in (ours, theirs):
        (grad_x,) = torch.autograd.grad((layer(x) ** 2).sum(), x, create_graph=True)
        second.append(torch.autograd.grad((grad_x**2).sum(), layer.weight)[0])
    assert second[1].abs().sum() > 0
    torch.testing.assert_close(second[0], second[1])


def test_a_second_derivative_through_the_fused_layers_is_refused_rather_than_wrong():
    attn, x, _, mask = attention_case(self_attention=True, p=0.1)
    ff = PositionwiseFeedForward(32, 64, 0.1).train()
    for layer in (lambda t: attn(t, mask=mask), ff):
        with pytest.raises(RuntimeError, match="no second derivative"):
            torch.autograd.grad((layer(x) ** 2).sum(), x, create_graph=True)


def test_the_fused_feed_forward_with_everything_dropped_gives_the_output_bias():
    ff = PositionwiseFeedForward(8, 16, 1.0).train()
    torch.testing.assert_close(ff(torch.randn(2, 3, 8)), ff.w2.bias.detach().expand(2, 3, 8))
