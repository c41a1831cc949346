"""The code a learner reads in playground/model/ is the code the default run trains, and the fast kernels train the
same model: an edit to each reference piece changes the next default run, and reference and fast give one loss curve."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT
from playground import experiment
from playground.model import attention, dropout, loss
from playground.model.layers import PositionwiseFeedForward

# the default composed config, shortened: fewer steps and smaller held-out splits, nothing else changed
SHORT = ["trainer.max_steps=10", "trainer.log_every=1", "trainer.eval_every=10", "dataset.num_valid=20",
         "dataset.num_test=20"]


def train_losses(compose_config, run_dir, *overrides):
    """train/loss at every step of the default experiment run in this process (as the command line runs it)."""
    experiment.run_train(compose_config(*SHORT, *overrides), run_dir)
    return torch.tensor([e.value for e in EventAccumulator(str(run_dir)).Reload().Scalars("train/loss")])


@pytest.fixture(scope="module")
def default_losses(tmp_path_factory):
    """The unedited default run's losses, once for every edit test below."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=SHORT)
    run_dir = tmp_path_factory.mktemp("default")
    experiment.run_train(cfg, run_dir)
    return torch.tensor([e.value for e in EventAccumulator(str(run_dir)).Reload().Scalars("train/loss")])


def assert_changed(edited, default_losses):
    assert edited.shape == default_losses.shape == (10,)
    assert not torch.allclose(edited, default_losses, rtol=1e-3), "the edit did not reach the default run"


@pytest.mark.slow
def test_fast_and_reference_kernels_train_the_default_model_to_the_same_losses(compose_config, tmp_path):
    # Both on 1 thread: the order of floating-point sums follows the thread count, and that alone moved the
    # reference's own losses by about 7e-6 relative over 20 steps of Adam (1 thread against 2), the size of the
    # tolerance. One thread count for both compares the kernels, not the thread counts; one thread, because two
    # threads beside the other test worker wait on each other (10 s here instead of 4 s).
    # On the CPU, whatever else the machine has: these are the CPU kernels, and on a GPU "fast" is SDPA.
    common = ["trainer.device=cpu", "trainer.precision=fp32", "model.dropout=0.0"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = train_losses(compose_config, tmp_path / "reference", *common, "trainer.kernels=reference")
        fast = train_losses(compose_config, tmp_path / "fast", *common, "trainer.kernels=fast")
    finally:
        torch.set_num_threads(threads)
    assert reference[-1] < reference[0]  # it learned something: the comparison is not of two idle runs
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=0)


def test_an_edit_to_scaled_dot_product_attention_changes_the_default_run(compose_config, tmp_path, monkeypatch,
                                                                          default_losses):
    textbook = attention.scaled_dot_product_attention

    def without_the_scale(q, k, v, mask=None, dropout=None, scaled=True):  # the classic first experiment
        return textbook(q * math.sqrt(q.size(-1)), k, v, mask, dropout, scaled)  # no 1/sqrt(d_k)

    monkeypatch.setattr(attention, "scaled_dot_product_attention", without_the_scale)
    assert_changed(train_losses(compose_config, tmp_path), default_losses)


def test_an_edit_to_the_feed_forward_changes_the_default_run(compose_config, tmp_path, monkeypatch, default_losses):
    monkeypatch.setattr(PositionwiseFeedForward, "forward", lambda self, x: self.w2(self.dropout(F.gelu(self.w1(x)))))
    assert_changed(train_losses(compose_config, tmp_path), default_losses)


def test_an_edit_to_dropout_changes_the_default_run(compose_config, tmp_path, monkeypatch, default_losses):
    # the edit a learner makes inside `dropout`: F.dropout(x, 0.3, training=True), in a default model whose
    # model.dropout is 0 (the line must run even then, or the edit would do nothing)
    monkeypatch.setattr(dropout, "F", SimpleNamespace(dropout=lambda x, p, training: F.dropout(x, 0.3, training)))
    assert_changed(train_losses(compose_config, tmp_path), default_losses)


def test_an_edit_to_the_loss_changes_the_default_runs_training_and_validation_loss(compose_config, tmp_path,
                                                                                    monkeypatch, default_losses):
    textbook = loss.sequence_loss
    monkeypatch.setattr(loss, "sequence_loss", lambda logits, tgt, eps, pad_id: textbook(logits, tgt, 0.0, pad_id))
    assert_changed(train_losses(compose_config, tmp_path), default_losses)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["valid/loss"] == pytest.approx(metrics["valid/nll"])  # no smoothing: the loss is the NLL


def test_with_fast_kernels_an_edited_loss_fails_the_fast_loss_check_and_trains_as_edited(compose_config, tmp_path,
                                                                                          monkeypatch):
    from playground.kernels import loss_function, support

    textbook = loss.sequence_loss
    monkeypatch.setattr(loss, "sequence_loss", lambda logits, tgt, eps, pad_id: textbook(logits, tgt, 0.0, pad_id))
    support.works.cache_clear()
    try:
        logits, target = torch.randn(2, 3, 20, requires_grad=True), torch.randint(4, 20, (2, 3))
        torch.testing.assert_close(loss_function("fast")(logits, target, 0.1, 0), textbook(logits, target, 0.0, 0))
    finally:
        support.works.cache_clear()
