"""Training the NMT way: the monitor picks best.pt, patience ends a run, accumulation, averaging, hypotheses."""

import json
import logging
import re
import shutil
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.util import tensor_util

from conftest import build
from playground.checkpoint import save_checkpoint
from playground.config import DatasetConfig, DecodeConfig
from playground.data import EOS, MODEL_IDS, PAD, load_data
from playground.errors import UserError
from playground.evaluate import exact_matches, output_limits, text_metrics
from playground.average import run_average
from playground.checks import check_trainer
from playground.experiment import run_train
from playground.kernels import loss_function
from playground.setup import build_optimizer, build_scheduler, resolve_recipe
from playground.tracking import Tracker
from playground.train import VALID_METRICS, BatchStream, Monitor, Progress, Training, _clip_gradients, resolve_monitor, train
from test_cli import ROOT, SMALL


@pytest.mark.parametrize("metric, mode, values, best_steps", [
    ("valid/bleu", "max", [3.0, 7.5, 7.5, 6.0, 9.1, 2.0], [1, 2, 2, 2, 5, 5]),  # a tie keeps the earlier weights
    ("valid/nll", "min", [2.0, 1.4, 1.6, 1.4, 1.1, float("nan")], [1, 2, 2, 2, 5, 5]),
])
def test_the_monitor_keeps_the_best_evaluation_in_its_direction(metric, mode, values, best_steps):
    monitor = Monitor(metric, mode)
    chosen = []
    for step, value in enumerate(values, start=1):
        monitor.update({metric: value, "valid/other": -value}, step)
        chosen.append(monitor.best_step)
    assert chosen == best_steps
    assert not monitor.exhausted  # patience 0: never stops


def test_patience_counts_evaluations_without_improvement_and_survives_a_checkpoint():
    monitor = Monitor("valid/exact_match", "max", patience=2)
    for step, value in [(10, 0.2), (20, 0.5), (30, 0.5)]:
        monitor.update({"valid/exact_match": value}, step)
    assert not monitor.exhausted
    resumed = Monitor("valid/exact_match", "max", patience=2)
    resumed.load_state_dict(monitor.state_dict())
    resumed.update({"valid/exact_match": 0.4}, 40)
    assert resumed.exhausted and resumed.best_step == 20
    assert "valid/exact_match has not improved on 0.5000 (step 20) for 2 evaluations" in resumed.reason()


def test_the_monitor_defaults_to_bleu_on_text_and_exact_match_on_synthetic_tasks():
    assert resolve_monitor(None, None, text_data=True) == ("valid/bleu", "max")
    assert resolve_monitor(None, None, text_data=False) == ("valid/exact_match", "max")
    assert resolve_monitor("valid/wer", None, text_data=True) == ("valid/wer", "min")
    assert resolve_monitor("valid/loss", "max", text_data=False) == ("valid/loss", "max")
    directions = {name: resolve_monitor(f"valid/{name}", None, text_data=True)[1] for name in VALID_METRICS}
    assert directions == {"loss": "min", "nll": "min", "ppl": "min", "token_accuracy": "max", "exact_match": "max",
                          "bleu": "max", "chrf": "max", "cer": "min", "wer": "min"}  # best.pt keeps the lowest error


def test_gradient_clipping_scales_the_global_norm_down_to_the_limit_and_reports_it_before():
    weights = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    weights[0].grad, weights[1].grad = torch.tensor([6.0, 0.0, 0.0]), torch.tensor([0.0, 8.0, 0.0, 0.0])  # norm 10
    run_ = SimpleNamespace(optimizer=torch.optim.SGD(weights, lr=1.0), scaler=torch.amp.GradScaler("cpu", enabled=False))
    assert _clip_gradients(run_, 1.0).item() == pytest.approx(10.0)
    torch.testing.assert_close(torch.cat([w.grad for w in weights]), torch.tensor([0.6, 0, 0, 0, 0.8, 0, 0]))
    assert _clip_gradients(run_, 0.0) is None  # 0: off, the gradients as they are
    torch.testing.assert_close(torch.cat([w.grad for w in weights]), torch.tensor([0.6, 0, 0, 0, 0.8, 0, 0]))


def test_the_time_left_counts_from_the_steps_this_run_has_taken(monkeypatch, caplog):
    clock = iter([100.0, 105.0])  # the run starts at 100 s and logs 5 s later
    monkeypatch.setattr("playground.train.time.perf_counter", lambda: next(clock))
    progress = Progress("log", max_steps=100, start_step=90, is_main=True)  # resumed at step 90
    with caplog.at_level(logging.INFO, logger="playground.train"):
        progress.log(95, {"train/loss": 1.0, "train/lr": 1e-3, "perf/tokens_per_sec": 1000.0})
    assert caplog.text.rstrip().endswith("ETA 0:00:05")  # 5 steps in 5 s, 5 steps to go


def test_a_run_resumed_at_an_epochs_end_continues_with_the_next_epochs_first_batch():
    rows = list(range(10))  # ten training pairs in batches of 5: two batches an epoch
    uninterrupted = [next_rows.tolist() for next_rows, _ in zip(BatchStream(rows, batch_size=5, seed=3), range(5))]
    for position in range(5):  # a checkpoint's data position, at the start, inside and at the end of an epoch
        resumed = BatchStream(rows, batch_size=5, seed=3, position=position)
        assert next(resumed).tolist() == uninterrupted[position], position


def test_exact_match_needs_the_whole_reference_and_nothing_more():
    ref = torch.tensor([[5, 6, 7, EOS], [5, 6, 7, EOS]])
    pred = torch.tensor([[5, 6], [5, 6]])  # a prefix of the reference is not a match
    assert exact_matches(pred, ref).tolist() == [False, False]
    assert exact_matches(torch.tensor([[5, 6, 7, EOS, PAD, PAD]]), ref[:1]).tolist() == [True]  # padding aside
    assert exact_matches(torch.tensor([[5, 6, 7, EOS, 8]]), ref[:1]).tolist() == [False]


def test_the_error_rates_count_edits_against_the_reference():
    metrics = text_metrics(["ab", "the cat"], ["abcd", "the black cat"])
    assert metrics["cer"] == pytest.approx(8 / 17)  # "cd" and "black " missing: 2 + 6 over 4 + 13 reference characters
    assert metrics["wer"] == pytest.approx(2 / 4)  # "ab" for "abcd", "black" missing: over 1 + 3 reference words
    assert text_metrics(["ab"], ["abcd"])["cer"] == pytest.approx(0.5)  # against the hypothesis it would be 1.0


def test_an_outputs_length_limit_is_max_len_a_times_its_source_plus_max_len_b_within_the_positions():
    src = torch.tensor([[5, 6, 7, PAD, PAD], [5, 6, 7, 8, 9]])  # 3 and 5 real tokens
    model = SimpleNamespace(max_len=12)
    limits = output_limits(model, src, DecodeConfig(max_len_a=2.0, max_len_b=1))
    assert limits.tolist() == [7, 11]
    assert output_limits(model, src, DecodeConfig(max_len_a=1.0, max_len_b=50)).tolist() == [12, 12]  # positions


@pytest.mark.parametrize("kernels", ["reference", "fast"])
@pytest.mark.parametrize("beam_size", [1, 3])
def test_the_longest_target_the_positions_allow_can_be_decoded_with_its_eos(kernels, beam_size, seeded):
    from conftest import tiny_model_config
    from playground.checks import check_lengths
    from playground.evaluate import decode

    check_lengths(tiny_model_config(max_len=11), DatasetConfig(name="reverse", max_len=10))  # accepted: 10 + BOS
    model = build(tiny_model_config(max_len=11), 20, 20, kernels).eval()
    with torch.no_grad():
        model.generator.bias[EOS] = -1e4  # a model that never ends: its outputs run to the limit
    src = torch.randint(4, 20, (2, 10))  # the reverse of 10 symbols is 10 tokens and EOS: 11 outputs
    out = decode(model, src, DecodeConfig(beam_size=beam_size, max_len_a=1.0, max_len_b=10))
    assert out.shape == (2, 11)  # room for all 11 in 11 positions (the decoder reads BOS and the first 10)


def test_an_outputs_length_limit_is_not_cut_one_short_by_the_rounding_of_max_len_a():
    model = SimpleNamespace(max_len=1024)
    for a, length, b, limit in [(1.3, 90, 10, 127), (2.1, 50, 10, 115), (0.29, 100, 0, 29), (2.6, 45, 10, 127)]:
        src = torch.full((1, length), 5)
        # a * length + b is a whole number here; float32 (and even float64) arithmetic gave one token less
        assert output_limits(model, src, DecodeConfig(max_len_a=a, max_len_b=b)).tolist() == [limit], (a, length, b)


BAD_TRAINER = [
    ("trainer.patience=-1", "trainer.patience=-1 must be 0 (no early stopping) or positive"),
    ("trainer.accumulate=0", "trainer.accumulate=0 must be positive"),
    ("trainer.keep_last=-2", "trainer.keep_last=-2 must be 0 (keep only last.pt and best.pt) or positive"),
    ("trainer.monitor=test/bleu", "trainer.monitor=test/bleu is not a metric of the validation runs: one of valid/loss"),
    ("trainer.monitor=valid/blue", "trainer.monitor=valid/blue is not a metric of the validation runs"),
    ("trainer.monitor_mode=up", "trainer.monitor_mode=up is not one of: max, min"),
]


BAD_OPTIMIZATION = [
    ("optimizer.eps=-1", "optimizer.eps=-1.0 must be positive (the paper's: 1e-9)"),
    ("optimizer.weight_decay=-0.1", "optimizer.weight_decay=-0.1 must be 0 (none) or positive"),
    ("optimizer.lr=-0.001", "optimizer.lr=-0.001 must be positive (or null: 2e-3 * sqrt(128 / model.d_model))"),
    ("optimizer.betas=[0.9,1.0]", "optimizer.betas=[0.9, 1.0] must be two numbers in [0, 1)"),
    ("optimizer=sgd optimizer.momentum=-1", "optimizer.momentum=-1.0 must be 0 (none) or positive"),
    ("optimizer=sgd optimizer.momentum=1.5", "optimizer.momentum=1.5 must be below 1 (0.9 is usual): at 1 or more "
                                             "every past gradient keeps its whole weight in each update, which grows "
                                             "without bound"),
    ("scheduler.min_lr_ratio=-2", "scheduler.min_lr_ratio=-2.0 must be in [0, 1] (a fraction of the peak)"),
    ("scheduler.warmup_steps=-5", "scheduler.warmup_steps=-5 must be 0 (no warmup) or positive"),
    ("scheduler=constant scheduler.warmup_steps=100", "scheduler.warmup_steps=100: scheduler=constant does not use it "
                                                      "(it is for scheduler=noam or cosine): remove it, or choose "
                                                      "scheduler=noam or cosine"),
    ("scheduler=noam scheduler.min_lr_ratio=0.1", "scheduler.min_lr_ratio=0.1: scheduler=noam does not use it (it is "
                                                  "for scheduler=cosine): remove it, or choose scheduler=cosine"),
    ("optimizer.momentum=0.5", "optimizer.momentum=0.5: optimizer=adam does not use it (it is for optimizer=sgd): "
                               "remove it, or choose optimizer=sgd"),
    ("optimizer=sgd optimizer.betas=[0.1,0.2]", "optimizer.betas=[0.1, 0.2]: optimizer=sgd does not use it (it is "
                                                "for optimizer=adam or adamw): remove it, or choose optimizer=adam or "
                                                "adamw"),
]


@pytest.mark.parametrize("overrides, message", BAD_OPTIMIZATION, ids=[b[0] for b in BAD_OPTIMIZATION])
def test_a_bad_optimizer_or_schedule_value_is_refused_naming_the_key_before_any_data_is_read(compose_config, tmp_path,
                                                                                             monkeypatch, overrides,
                                                                                             message):
    from playground import experiment

    monkeypatch.setattr(experiment, "load_data", lambda *a, **k: pytest.fail("data was read before the check"))
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        run_train(compose_config(*overrides.split()), tmp_path)


@pytest.mark.parametrize("override, message", BAD_TRAINER, ids=[b[0] for b in BAD_TRAINER])
def test_a_bad_trainer_value_is_refused_naming_the_key(compose_config, override, message):
    t = OmegaConf.to_object(compose_config(override).trainer)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_trainer(t)
        resolve_monitor(t.monitor, t.monitor_mode, text_data=False)


def test_the_learning_rate_and_warmup_follow_the_model_and_run_unless_given(compose_config):
    cfg = compose_config("model=small", "trainer.max_steps=3000")
    line = resolve_recipe(cfg, cfg.trainer.max_steps)
    assert cfg.optimizer.lr == pytest.approx(2e-3 * (128 / 256) ** 0.5) and cfg.scheduler.warmup_steps == 400
    assert "peak lr 0.00141 (automatic" in line and "warmup 400 steps (automatic" in line
    cfg = compose_config("model=small", "optimizer.lr=5e-4", "scheduler.warmup_steps=4000", "trainer.max_steps=100000")
    assert "(optimizer.lr)" in resolve_recipe(cfg, 100000) and (cfg.optimizer.lr, cfg.scheduler.warmup_steps) == (5e-4, 4000)
    cfg = compose_config()  # the default experiment: the tiny model's tuned 2e-3, warmup 500 / 7.5
    resolve_recipe(cfg, cfg.trainer.max_steps)
    assert (cfg.optimizer.lr, cfg.scheduler.warmup_steps) == (2e-3, 67)
    with pytest.raises(UserError, match="give optimizer=sgd a learning rate"):
        resolve_recipe(compose_config("optimizer=sgd", "optimizer.lr=null"), 100)


def _train_steps(compose_config, tmp_path, batch_size, accumulate, steps=3):
    cfg = compose_config("dataset.num_train=256", "dataset.num_valid=8", "dataset.num_test=8", "model.d_model=32",
                         "model.d_ff=64", "model.dropout=0.0", f"trainer.batch_size={batch_size}",
                         # plain SGD: the update is the gradient itself (Adam would blow up the rounding noise of
                         # gradients that are zero in exact arithmetic, such as the key projection's bias)
                         "optimizer=sgd", "optimizer.lr=0.5", "optimizer.momentum=0.0", "scheduler=constant",
                         f"trainer.accumulate={accumulate}", f"trainer.max_steps={steps}", "trainer.precision=fp32")
    data = load_data(cfg.dataset)
    torch.manual_seed(0)
    model = build(cfg.model, data.src_tokenizer.vocab_size, data.tgt_tokenizer.vocab_size)
    resolve_recipe(cfg, steps)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), torch.device("cpu"))
    run_ = Training(model=model, optimizer=optimizer, scheduler=build_scheduler(cfg.scheduler, optimizer, steps),
                    scaler=torch.amp.GradScaler("cpu", enabled=False), loss_fn=loss_function("reference"),
                    pad_id=MODEL_IDS["pad_id"], device=torch.device("cpu"))
    settings = OmegaConf.to_object(cfg.trainer)
    batches = BatchStream(data.splits["train"], batch_size, cfg.seed)
    train(run_, settings, data.splits["train"], batches, Tracker(tmp_path, enabled=False), lambda step: False,
          lambda step: None)
    return model.state_dict(), run_.scheduler.last_epoch  # the weights, and how often the schedule moved on


def test_accumulating_two_batches_gives_the_update_of_the_doubled_batch(compose_config, tmp_path):
    doubled, _ = _train_steps(compose_config, tmp_path, batch_size=32, accumulate=1)
    accumulated, schedule_steps = _train_steps(compose_config, tmp_path, batch_size=16, accumulate=2)
    single, _ = _train_steps(compose_config, tmp_path, batch_size=16, accumulate=1)
    assert schedule_steps == 3  # once per update (3 steps), not once per batch (6)
    for name, weights in doubled.items():
        torch.testing.assert_close(accumulated[name], weights, rtol=1e-5, atol=1e-5, msg=name)
    assert any(not torch.allclose(single[n], w, atol=1e-5) for n, w in doubled.items())  # the test can tell


def test_the_averaged_checkpoint_holds_the_mean_of_the_weights_and_needs_two(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    weights = [{"w": torch.randn(3, 4), "b": torch.randn(4)} for _ in range(3)]
    for step, w in zip((30, 10, 20), weights):
        save_checkpoint(folder / f"step_{step}.pt", {"model": w, "config": {"model": {"d_model": 4}},
                                                     "tokenizers": {"src": {}, "tgt": {}}, "step": step})
    out = run_average(OmegaConf.create({"ckpt_path": str(tmp_path / "run")}), tmp_path / "avg")
    averaged = torch.load(out, weights_only=True)
    torch.testing.assert_close(averaged["model"]["w"], sum(w["w"] for w in weights) / 3)
    torch.testing.assert_close(averaged["model"]["b"], sum(w["b"] for w in weights) / 3)
    assert averaged["averaged_steps"] == [10, 20, 30] and averaged["step"] == 30 and "optimizer" not in averaged
    for f in list(folder.glob("step_*.pt"))[1:]:
        f.unlink()
    with pytest.raises(UserError, match=r"holds 1 step_N.pt checkpoint, and averaging needs at least 2"):
        run_average(OmegaConf.create({"ckpt_path": str(folder)}), tmp_path / "avg2")


def test_averaging_refuses_step_checkpoints_of_another_run_of_the_same_shape(tmp_path):
    # two seeds of one experiment: the same parameter names and shapes, but averaging them means nothing
    folder = tmp_path / "mixed" / "checkpoints"
    config = {"model": {"d_model": 4}, "optimizer": {"lr": 0.001}, "trainer": {"max_steps": 30}}
    data = {"train_file": {"path": "train.tsv", "bytes": 10, "sha256": "a" * 64}}
    for step, seed in ((10, 1), (20, 1), (30, 2)):
        save_checkpoint(folder / f"step_{step}.pt", {"model": {"w": torch.randn(3, 4)}, "step": step, "data": data,
                                                     "config": {**config, "seed": seed},
                                                     "tokenizers": {"src": {}, "tgt": {}}})
    with pytest.raises(UserError, match=r"step_10.pt: trained differently from step_30.pt.*seed=1 \(step_30.pt: 2\)"):
        run_average(OmegaConf.create({"ckpt_path": str(folder)}), tmp_path / "avg")
    assert not (tmp_path / "avg").exists()
    # another data file's content under the same name is another run too
    other = {"train_file": {**data["train_file"], "sha256": "b" * 64}}
    save_checkpoint(folder / "step_30.pt", {"model": {"w": torch.randn(3, 4)}, "step": 30, "data": other,
                                            "config": {**config, "seed": 1}, "tokenizers": {"src": {}, "tgt": {}}})
    with pytest.raises(UserError, match=r"dataset.train_file of other content"):
        run_average(OmegaConf.create({"ckpt_path": str(folder)}), tmp_path / "avg")
    # what a resumed run may change (a longer trainer.max_steps) is still the same run
    for step in (10, 20):
        save_checkpoint(folder / f"step_{step}.pt", {"model": {"w": torch.randn(3, 4)}, "step": step, "data": other,
                                                     "config": {**config, "seed": 1, "trainer": {"max_steps": 20}},
                                                     "tokenizers": {"src": {}, "tgt": {}}})
    assert run_average(OmegaConf.create({"ckpt_path": str(folder)}), tmp_path / "avg").is_file()


@pytest.mark.slow
def test_a_run_stops_when_the_monitor_stops_improving_keeps_its_last_checkpoints_and_averages_them(
        compose_config, tmp_path, caplog, entry):
    # valid/loss falls while the model learns, so with mode=max no evaluation after the first is better
    caplog.set_level(logging.INFO)
    run_train(compose_config(*SMALL, "trainer.max_steps=100", "trainer.eval_every=10", "trainer.patience=2",
                             "trainer.monitor=valid/loss", "trainer.monitor_mode=max", "trainer.keep_last=2"),
              tmp_path / "run")  # in this process, as the command calls it; mode=eval below is the command
    assert "early stop: valid/loss has not improved" in caplog.text
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["step"], metrics["last_step"], metrics["monitor"]) == (10, 30, "valid/loss")
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == 10 and metrics["valid/loss"] == pytest.approx(best["metrics"]["loss"])
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*.pt")) == ["step_20.pt", "step_30.pt"]
    hypotheses = (tmp_path / "run" / "hypotheses.txt").read_text().split("\n")
    assert len(hypotheses) == 60 + 1 and hypotheses[-1] == ""  # one line per test example of SMALL
    events = EventAccumulator(str(tmp_path / "run")).Reload()
    assert {"valid/nll", "valid/ppl", "test/nll"} <= set(events.Tags()["scalars"])
    layout = layout_pb2.Layout()
    layout.ParseFromString(tensor_util.make_ndarray(events.Tensors("custom_scalars__config__")[0].tensor_proto).item())
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert ["train/loss", "valid/loss"] in charts.values()

    averaging = entry("mode=average", f"ckpt_path={tmp_path}/run", f"hydra.run.dir={tmp_path}/avg")
    assert averaging.returncode == 0, averaging.stderr
    assert "averaged the weights of steps 20, 30" in averaging.stdout
    assert "averaged the weights of steps 20, 30" in (tmp_path / "avg" / "transformer_playground.log").read_text()
    evaluated = entry("mode=eval", f"ckpt_path={tmp_path}/avg/checkpoints/averaged.pt", f"hydra.run.dir={tmp_path}/eval")
    assert evaluated.returncode == 0, evaluated.stderr
    assert len((tmp_path / "eval" / "hypotheses.txt").read_text().splitlines()) == 60
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test/pairs_scored"] == 60


@pytest.mark.slow
def test_a_run_that_reaches_max_steps_is_not_logged_as_stopped_early(compose_config, tmp_path, caplog):
    # patience runs out at the last evaluation, which is at max_steps: the run ended because its steps were done
    from test_reliability import FAST

    caplog.set_level(logging.INFO)
    run_train(compose_config(*FAST, "trainer.max_steps=4", "trainer.eval_every=2", "trainer.patience=1",
                             "trainer.monitor=valid/loss", "trainer.monitor_mode=max"), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["last_step"] == 4
    assert "early stop" not in caplog.text
    assert "testing the weights of step 2 (best.pt, by valid/loss)" in caplog.text


def test_a_sweeper_looking_the_other_way_is_refused_before_any_work(tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hparams_search=optuna", "trainer.monitor=valid/loss"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # as inside a job of `-m hparams_search=optuna trainer.monitor=valid/loss`
    try:
        with pytest.raises(UserError, match=r"^hydra.sweeper.direction=maximize but trainer.monitor_mode=min: the "
                                            r"sweeper would look for the worst runs \(set hydra.sweeper.direction=minimize\)"):
            run_train(cfg, tmp_path / "run")
    finally:
        HydraConfig.instance().cfg = None
    assert not (tmp_path / "run").exists()


def test_the_held_out_test_split_is_found_again_from_the_training_file_or_named_when_it_is_gone(text_corpus):
    config = OmegaConf.structured(DatasetConfig(name="text_pairs", train_file=str(text_corpus / "train.tsv"),
                                                tokenizer="word", vocab_size=200, min_frequency=1))
    full = load_data(config)
    alone = load_data(config, tokenizers=(full.src_tokenizer, full.tgt_tokenizer), splits=("test",))
    assert set(alone.splits) == {"test"} and alone.texts["test"] == full.texts["test"]
    (text_corpus / "train.tsv").rename(text_corpus / "moved.tsv")
    with pytest.raises(UserError, match=r"the test pairs were held out of dataset.train_file=.*train.tsv "
                                        r"\(dataset.test_fraction\), which is not there any more: give them with "
                                        r"dataset.test_file=PATH"):
        load_data(config, tokenizers=(full.src_tokenizer, full.tgt_tokenizer), splits=("test",))


@pytest.mark.slow
def test_eval_of_a_text_run_needs_only_the_checkpoint_and_the_test_file(compose_config, text_corpus, tmp_path, entry):
    run_train(compose_config("dataset=text_pairs", f"dataset.train_file={text_corpus}/train.tsv",
                             f"dataset.test_file={text_corpus}/test.tsv", "dataset.tokenizer=word",
                             "dataset.vocab_size=200", "dataset.max_tgt_len=5", "model.d_model=32", "model.d_ff=64",
                             "trainer.max_steps=10", "trainer.eval_every=10"), tmp_path / "run")
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert trained["monitor"] == "valid/bleu" and trained["test/pairs_dropped"] > 0
    shutil.move(text_corpus / "train.tsv", tmp_path / "elsewhere.tsv")
    evaluated = entry("mode=eval", f"ckpt_path={tmp_path}/run/checkpoints/best.pt", f"hydra.run.dir={tmp_path}/eval",
                      cwd=tmp_path)  # from another folder: the checkpoint holds the test file's absolute path
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["test/bleu"] == pytest.approx(trained["test/bleu"])
    assert metrics["test/pairs_scored"] == trained["test/pairs_scored"] == 40 - trained["test/pairs_dropped"]
    hypotheses = (tmp_path / "eval" / "hypotheses.txt").read_text().splitlines()
    assert hypotheses == (tmp_path / "run" / "hypotheses.txt").read_text().splitlines()
    assert len(hypotheses) == metrics["test/pairs_scored"]


@pytest.mark.slow
def test_eval_of_a_test_split_held_out_of_the_training_file_refuses_a_changed_file_or_draw(compose_config, text_corpus,
                                                                                         tmp_path, entry):
    run_train(compose_config("dataset=text_pairs", f"dataset.train_file={text_corpus}/train.tsv",
                             "dataset.tokenizer=word", "dataset.vocab_size=200", "model.d_model=16", "model.d_ff=32",
                             "model.heads=2", "model.enc_layers=1", "model.dec_layers=1", "trainer.max_steps=2",
                             "trainer.batch_size=16"), tmp_path / "run")
    ckpt = f"ckpt_path={tmp_path}/run/checkpoints/last.pt"
    assert entry("mode=eval", ckpt, f"hydra.run.dir={tmp_path}/eval").returncode == 0  # the same file and draw
    drawn = entry("mode=eval", ckpt, "dataset.seed=1", f"hydra.run.dir={tmp_path}/seed")
    assert drawn.returncode == 2 and drawn.stderr.startswith(
        "error: dataset.seed=1 (the checkpoint: 0): the test pairs are held out of the training file, so these would "
        "not be the pairs the run of ckpt_path=")
    with open(text_corpus / "train.tsv", "a") as f:
        f.write("a new sentence\tuna frase nuova\n")  # the seeded draw of the held-out pairs moves
    changed = entry("mode=eval", ckpt, f"hydra.run.dir={tmp_path}/changed")
    assert changed.returncode == 2 and "train.tsv has changed since the checkpoint was written" in changed.stderr
    assert "some would be pairs it trained on (give the test pairs as dataset.test_file=PATH)" in changed.stderr
    assert not (tmp_path / "changed" / "metrics.json").exists()
    given = entry("mode=eval", ckpt, f"dataset.test_file={text_corpus}/test.tsv", f"hydra.run.dir={tmp_path}/given")
    assert given.returncode == 0, given.stderr  # a test file of one's own is scored as it is


def test_the_nn_transformer_baseline_trains_on_the_same_settings_and_reports_test_scores(capsys):
    from playground import baseline

    flat = baseline.run(["trainer.max_steps=4", "trainer.eval_every=2", "dataset.num_train=200", "dataset.num_valid=8",
                         "dataset.num_test=8", "model.d_model=16", "model.d_ff=32", "model.heads=2",
                         "trainer.precision=fp32"])
    printed = capsys.readouterr().out
    assert "nn.Transformer:" in printed and "step 4: valid/loss" in printed
    assert {"test/bleu", "test/exact_match", "test/nll"} <= set(flat) and flat["step"] in (2, 4)


@pytest.mark.parametrize("override, message", [
    ("model.heads=7", r"^model.heads=7 does not divide model.d_model=128"),
    ("model.hedas=7", r"^Could not override 'model.hedas': Key 'hedas' not in 'ModelConfig' \(did you mean")])
def test_the_baseline_refuses_what_the_command_line_refuses_in_the_same_line(override, message):
    from playground import baseline

    with pytest.raises(UserError, match=message):
        baseline.run([override])
