"""A resumed run continues the experiment its checkpoint began, or says in one line why it cannot."""

import logging

import pytest
import torch

from playground import experiment
from playground.data.toy_corpus import make_pairs, write
from playground.errors import UserError
from playground.resume import check_world_size
from test_reliability import FAST


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """last.pt of 8 steps of the small synthetic run, trained in this process."""
    from conftest import ROOT
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*FAST, "trainer.max_steps=8", "trainer.eval_every=8"])
    run_dir = tmp_path_factory.mktemp("first")
    experiment.run_train(cfg, run_dir)
    return run_dir / "checkpoints" / "last.pt"


@pytest.mark.parametrize("override, saved", [
    ("model.heads=1", "2"), ("model.norm_position=pre", "post"), ("model.activation=gelu", "relu"),
    ("model.positional=learned", "sinusoidal"), ("model.dropout=0.3", "0.0"), ("trainer.batch_size=8", "16"),
    ("trainer.label_smoothing=0.0", "0.1"), ("scheduler=noam", "cosine"), ("seed=7", "1234"),
    ("dataset.num_train=200", "300")])
def test_a_resume_into_another_experiment_is_refused_naming_what_differs(compose_config, checkpoint, tmp_path,
                                                                         override, saved):
    key, value = override.split("=")
    key = {"scheduler": "scheduler.name"}.get(key, key)
    with pytest.raises(UserError, match=rf"^ckpt_path=.*last.pt was trained differently: {key}={value} \(the "
                                        rf"checkpoint: {saved}\)\. .*trainer.resume_override=true resumes anyway"):
        experiment.run_train(compose_config(*FAST, override, "trainer.max_steps=16", f"ckpt_path={checkpoint}"),
                             tmp_path / "resumed")
    assert not (tmp_path / "resumed").exists()  # refused before anything was written


def test_a_resume_may_train_longer_and_change_how_it_runs(compose_config, checkpoint, tmp_path):
    flat = experiment.run_train(compose_config(*FAST, "trainer.max_steps=12", "trainer.eval_every=2",
                                               "trainer.kernels=fast", "trainer.precision=fp32",
                                               f"ckpt_path={checkpoint}"), tmp_path / "resumed")
    assert flat["last_step"] == 12



def test_a_resume_with_more_steps_trains_every_resumed_step_on_the_cosine_stretched_to_the_new_length(
        compose_config, checkpoint, tmp_path):
    """The checkpoint ended its 8-step cosine at 0; resumed to 16 steps, step 9 on is the 16-step cosine (warmup 1,
    as the checkpoint's run chose), from the first resumed step: not one more step at the old schedule's 0."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from playground.setup import auto_lr, cosine

    experiment.run_train(compose_config(*FAST, "trainer.max_steps=16", "trainer.log_every=1", "trainer.eval_every=16",
                                        f"ckpt_path={checkpoint}"), tmp_path / "resumed")
    logged = {e.step: e.value for e in EventAccumulator(str(tmp_path / "resumed")).Reload().Scalars("train/lr")}
    expected = {step: auto_lr(16) * cosine(step, 1, 16, 0.0) for step in range(9, 17)}
    assert logged == pytest.approx(expected, rel=1e-6)
    assert logged[9] > 0.4 * auto_lr(16)  # about halfway down the 16-step cosine, where the 8-step one had ended

def test_resume_override_applies_a_new_learning_rate_and_logs_every_change(compose_config, checkpoint, tmp_path,
                                                                          caplog):
    caplog.set_level(logging.WARNING)
    experiment.run_train(compose_config(*FAST, "optimizer.lr=0.01", "trainer.batch_size=8", "trainer.max_steps=12",
                                        "trainer.resume_override=true", f"ckpt_path={checkpoint}"), tmp_path / "r")
    assert "trainer.resume_override=true: resuming with optimizer.lr=0.01 (the checkpoint: 0.00565" in caplog.text
    assert "trainer.batch_size=8 (the checkpoint: 16)" in caplog.text
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=False)
    assert state["scheduler"]["base_lrs"] == [0.01]  # the restored schedule peaks at the new rate, not the old


def test_resume_override_to_another_optimizer_starts_its_state_afresh_and_new_settings_take_effect(
        compose_config, checkpoint, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    flat = experiment.run_train(compose_config(*FAST, "optimizer=sgd", "trainer.max_steps=10",
                                               "trainer.resume_override=true", f"ckpt_path={checkpoint}"),
                                tmp_path / "sgd")  # Adam's moments mean nothing to SGD (it crashed on 'momentum')
    assert flat["last_step"] == 10
    assert "optimizer.name=sgd (the checkpoint: adam): the optimizer's state starts afresh" in caplog.text
    experiment.run_train(compose_config(*FAST, "optimizer.weight_decay=0.25", "optimizer.betas=[0.8,0.9]",
                                        "trainer.max_steps=10", "trainer.resume_override=true",
                                        f"ckpt_path={checkpoint}"), tmp_path / "adam")
    group = torch.load(tmp_path / "adam" / "checkpoints" / "last.pt", weights_only=False)["optimizer"]["param_groups"][0]
    assert group["weight_decay"] == 0.25 and tuple(group["betas"]) == (0.8, 0.9)  # not the checkpoint's 0 and 0.98


def test_a_changed_training_file_is_refused_and_an_overridden_resume_keeps_the_checkpoints_vocabulary(
        compose_config, tmp_path, caplog):
    pairs = make_pairs(300, seed=5)
    write(pairs[:260], tmp_path / "train.tsv", "tsv")
    write(pairs[260:], tmp_path / "test.tsv", "tsv")
    text = ["dataset=text_pairs", f"dataset.train_file={tmp_path}/train.tsv", f"dataset.test_file={tmp_path}/test.tsv",
            "dataset.tokenizer=word", "dataset.vocab_size=300", "model.d_model=16", "model.d_ff=32", "model.heads=2",
            "model.enc_layers=1", "model.dec_layers=1", "trainer.batch_size=16", "trainer.eval_every=4"]
    experiment.run_train(compose_config(*text, "trainer.max_steps=4"), tmp_path / "first")
    last = tmp_path / "first" / "checkpoints" / "last.pt"
    with open(tmp_path / "train.tsv", "a", encoding="utf-8") as f:
        f.write("zebras quietly juggle\tle zebre giocolano piano\n")  # words the checkpoint's vocabulary lacks
    with pytest.raises(UserError, match=r"dataset.train_file=.*train.tsv has changed since the checkpoint was "
                                        r"written \([0-9,]+ bytes then, [0-9,]+ now; compared by SHA-256\)"):
        experiment.run_train(compose_config(*text, "trainer.max_steps=8", f"ckpt_path={last}"), tmp_path / "refused")
    caplog.set_level(logging.WARNING)
    experiment.run_train(compose_config(*text, "trainer.max_steps=8", "trainer.resume_override=true",
                                        f"ckpt_path={last}"), tmp_path / "resumed")
    assert "has changed since the checkpoint was written" in caplog.text
    before = torch.load(last, weights_only=False)["tokenizers"]
    after = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=False)["tokenizers"]
    assert after == before  # not retrained on the changed file: the weights' rows still mean the same tokens


def test_a_checkpoint_of_another_number_of_processes_is_refused_or_resumed_with_fresh_random_states():
    assert check_world_size("last.pt", 2, 2, override=False)
    with pytest.raises(UserError, match=r"^ckpt_path=last.pt was written by 2 processes and this run has 1: resume "
                                        r"with 2 \(torchrun --nproc_per_node=2\) to continue exactly"):
        check_world_size("last.pt", 2, 1, override=False)
    assert not check_world_size("last.pt", 1, 2, override=True)  # each process then seeds its own generators


def test_an_unreadable_last_checkpoint_names_the_newest_readable_one_beside_it(compose_config, tmp_path):
    experiment.run_train(compose_config(*FAST, "trainer.max_steps=8", "trainer.eval_every=4", "trainer.keep_last=2"),
                         tmp_path / "first")
    last = tmp_path / "first" / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.unlink()  # a new file: step_8.pt, a hard link to the old last.pt, keeps its content
    last.write_bytes(data[: len(data) // 2])  # as a crash or a full disk mid-copy would leave it
    with pytest.raises(UserError) as refused:
        experiment.run_train(compose_config(*FAST, "trainer.max_steps=12", f"ckpt_path={last}"), tmp_path / "r")
    message = str(refused.value)
    assert message.startswith(f"ckpt_path={last}: not a readable checkpoint")
    newest = tmp_path / "first" / "checkpoints" / "step_8.pt"
    assert message.endswith(f"the newest readable checkpoint beside it is step_8.pt (step 8): resume from it with "
                            f"ckpt_path={newest}")
    flat = experiment.run_train(compose_config(*FAST, "trainer.max_steps=12", f"ckpt_path={newest}"), tmp_path / "r")
    assert flat["last_step"] == 12


@pytest.mark.parametrize("keep_last, best_step", [(3, 2), (2, 6)])
def test_a_run_resumed_from_an_earlier_step_tests_the_best_weights_up_to_that_step_not_a_later_best_pt(
        compose_config, tmp_path, monkeypatch, keep_last, best_step):
    # valid/exact_match scripted by evaluation: best at step 2, worse at 4, best.pt rewritten at 6; the branch resumed
    # from step_4.pt scores worse at its step 6. Its best is step 2's weights (step_2.pt, where kept; otherwise it
    # chooses afresh), never the first run's step 6
    scores = iter([0.5, 0.1, 0.9, 0.2])
    evaluator = experiment._evaluator

    def scripted(*args):
        run = evaluator(*args)

        def evaluate(split):
            metrics, predictions, hypotheses = run(split)
            if split == "valid":
                metrics["exact_match"] = next(scores)
            return metrics, predictions, hypotheses
        return evaluate

    monkeypatch.setattr(experiment, "_evaluator", scripted)
    common = [*FAST, "trainer.eval_every=2", f"trainer.keep_last={keep_last}"]
    experiment.run_train(compose_config(*common, "trainer.max_steps=6"), tmp_path / "first")
    kept = tmp_path / "first" / "checkpoints"
    assert torch.load(kept / "best.pt", weights_only=True)["step"] == 6
    flat = experiment.run_train(compose_config(*common, "trainer.max_steps=6", f"ckpt_path={kept / 'step_4.pt'}"),
                                tmp_path / "branch")
    assert flat["step"] == best_step
    best = torch.load(tmp_path / "branch" / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == best_step
    expected = torch.load(kept / "step_2.pt" if best_step == 2 else tmp_path / "branch" / "checkpoints" / "last.pt",
                          weights_only=True)["model"]
    assert all(torch.equal(best["model"][k], expected[k]) for k in expected)


def test_a_checkpoint_from_before_the_attention_and_feed_forward_dropout_keys_resumes_only_as_it_trained(
        compose_config):
    from omegaconf import OmegaConf

    from playground.config import upgrade_saved_config
    from playground.resume import config_changes

    def saved(*overrides):  # a config as a checkpoint written before model.attention_dropout records it
        config = OmegaConf.to_container(compose_config(*overrides), resolve=True)
        config["model"] = {k: v for k, v in config["model"].items() if k not in ("attention_dropout", "ffn_dropout")}
        return upgrade_saved_config(config)

    now = OmegaConf.to_container(compose_config("model=base"), resolve=True)  # model=base sets both to 0 now
    old = saved("model=base")  # where model.dropout=0.1 reached the attention weights and feed-forward too
    assert "model.attention_dropout=0.0 (the checkpoint: None)" in config_changes(old, now)
    assert "model.ffn_dropout=0.0 (the checkpoint: None)" in config_changes(old, now)
    assert config_changes(saved(), OmegaConf.to_container(compose_config(), resolve=True)) == []


def test_a_finished_run_is_not_resumed_without_more_steps(compose_config, checkpoint, tmp_path):
    with pytest.raises(UserError, match=r"is at step 8, and trainer.max_steps=8: raise trainer.max_steps to train "
                                        r"further"):
        experiment.run_train(compose_config(*FAST, "trainer.max_steps=8", f"ckpt_path={checkpoint}"), tmp_path / "r")


def test_a_data_file_edited_to_the_same_size_is_seen_as_changed(tmp_path):
    import os

    from playground.data.cache import file_sha256
    from playground.resume import data_changes, data_fingerprint

    train = tmp_path / "train.tsv"
    train.write_text("the cat\tle chat\n")
    before = data_fingerprint({"train_file": str(train)})
    stat = os.stat(train)
    train.write_text("the dog\tle chat\n")  # the same number of bytes
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # and a new time, as an editor leaves it
    assert file_sha256(train) != before["train_file"]["sha256"]  # in this process too: not the hash of the old bytes
    changes = data_changes(before, data_fingerprint({"train_file": str(train)}))
    assert len(changes) == 1 and "has changed since the checkpoint was written (16 bytes then, 16 now" in changes[0]


def test_a_changed_file_of_a_moses_pair_is_seen_as_changed(tmp_path):
    from playground.resume import data_changes, data_fingerprint

    dataset = {"train_file": str(tmp_path / "train"), "src_lang": "en", "tgt_lang": "it"}
    (tmp_path / "train.en").write_text("the cat\n")
    (tmp_path / "train.it").write_text("il gatto\n")
    before = data_fingerprint(dataset)
    assert set(before) == {"train_file.en", "train_file.it"}
    (tmp_path / "train.it").write_text("il cane\n")
    assert data_changes(before, data_fingerprint(dataset)) == [
        f"dataset.train_file={tmp_path}/train: {tmp_path}/train.it has changed since the checkpoint was written "
        f"(9 bytes then, 8 now; compared by SHA-256)"]
    (tmp_path / "train.en").unlink()
    assert data_changes(before, data_fingerprint(dataset))[0] == \
        f"dataset.train_file={tmp_path}/train: {tmp_path}/train.en is not there any more"
