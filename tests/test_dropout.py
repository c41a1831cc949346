"""The model's dropout: zero with probability p, scale the rest by 1 / (1 - p), in training only."""

import pytest
import torch

from playground.model.dropout import Dropout, dropout


def test_dropout_zeroes_about_p_of_the_elements_and_keeps_the_expected_value(seeded):
    x = torch.ones(1_000_000)
    y = dropout(x, 0.1, training=True)
    assert (y == 0).float().mean().item() == pytest.approx(0.1, abs=0.002)
    assert y.mean().item() == pytest.approx(1.0, abs=0.005)
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))


def test_the_gradient_flows_only_through_the_kept_elements(seeded):
    x = torch.randn(64, 32, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    y.sum().backward()
    kept = y != 0
    torch.testing.assert_close(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.7))
    assert (x.grad[~kept] == 0).all()


def test_dropout_is_the_identity_in_eval_mode_and_at_zero_probability():
    x = torch.randn(10, 10)
    module = Dropout(0.5).eval()
    assert module(x) is x
    assert dropout(x, 0.0, training=True) is x
