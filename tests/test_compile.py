"""trainer.compile: torch.compile where it can work, and one clear message and an uncompiled model where not."""

import shutil
from types import SimpleNamespace

import pytest
import torch

from playground import setup
from playground.model import sequence_loss
from conftest import build


def small_model():
    cfg = SimpleNamespace(d_model=32, heads=2, enc_layers=1, dec_layers=1, d_ff=64, dropout=0.0, norm_position="post",
                          norm="layernorm", final_norm=False, positional="sinusoidal", activation="relu",
                          tie_embeddings="none", max_len=32)
    torch.manual_seed(0)
    return build(cfg, 20, 20)


def test_without_a_cpp_compiler_compile_is_skipped_with_a_message_naming_the_key(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    messages = []
    model = small_model()
    assert setup.maybe_compile(model, True, torch.device("cpu"), messages.append) is model
    assert len(messages) == 1 and messages[0].startswith("trainer.compile=true but no C++ compiler found")


def test_compile_off_returns_the_model_itself():
    model = small_model()
    assert setup.maybe_compile(model, False, torch.device("cpu")) is model


@pytest.mark.slow
def test_the_compiled_model_trains_to_the_same_loss_as_the_eager_one():
    eager = small_model()  # (where compile cannot work, maybe_compile returns the model and this compares it to itself)
    compiled = setup.maybe_compile(small_model(), True, torch.device("cpu"))
    src, tgt = torch.randint(4, 20, (4, 7)), torch.randint(4, 20, (4, 8))
    losses = []
    for model in (eager, compiled):
        loss = sequence_loss(model(src, tgt[:, :-1]), tgt[:, 1:], 0.1, 0)
        loss.backward()
        losses.append((loss.detach(), next(iter(model.parameters())).grad))
    torch.testing.assert_close(losses[1][0], losses[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses[1][1], losses[0][1], rtol=1e-3, atol=1e-5)
