"""A run survives interruption, resumes exactly, refuses garbage, and scales to several processes."""

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from playground import experiment
from playground.errors import UserError
from playground.setup import ONEDNN_CACHE, bound_onednn_cache, cosine
from test_cli import ENTRY, ROOT

FAST = ["model.d_model=16", "model.d_ff=32", "model.heads=2", "model.enc_layers=1", "model.dec_layers=1",
        "dataset.num_train=300", "dataset.num_valid=20", "dataset.num_test=20", "trainer.batch_size=16"]


def losses(run_dir):
    return {e.step: e.value for e in EventAccumulator(str(run_dir)).Reload().Scalars("train/loss")}


def start(*args, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.Popen([sys.executable, ENTRY, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def wait_for(path, process, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_resumed_run_continues_with_exactly_the_losses_of_the_uninterrupted_run(compose_config, tmp_path):
    # the warmup is given: left automatic, it is sized to each run's max_steps, and 16 steps is not 24
    common = [*FAST, "model.dropout=0.1", "scheduler=noam", "scheduler.warmup_steps=4", "trainer.log_every=1",
              "trainer.eval_every=8"]
    # run_train in this process, as the command calls it: three new processes would add some 10 s of start-up
    experiment.run_train(compose_config(*common, "trainer.max_steps=24"), tmp_path / "whole")
    experiment.run_train(compose_config(*common, "trainer.max_steps=16"), tmp_path / "first")
    torch.manual_seed(99)  # the resumed run must not depend on the random state it finds
    experiment.run_train(compose_config(*common, "trainer.max_steps=24",
                                        f"ckpt_path={tmp_path}/first/checkpoints/last.pt"), tmp_path / "resumed")
    expected, got = losses(tmp_path / "whole"), losses(tmp_path / "resumed")
    assert sorted(got) == list(range(17, 25))
    assert [got[s] for s in range(17, 25)] == [expected[s] for s in range(17, 25)]  # bit for bit
    assert losses(tmp_path / "first")[16] == expected[16]


@pytest.mark.slow
def test_a_run_resumed_between_log_steps_logs_the_train_loss_the_uninterrupted_run_logs(compose_config, tmp_path):
    # evaluations at steps 6, 12, 18 save step_N.pt between the log steps 4, 8, 12, ...: a resume from step_6.pt
    # must log at step 8 the mean loss of steps 5-8, as the uninterrupted run does, not that of steps 7-8
    common = [*FAST, "model.dropout=0.1", "scheduler=noam", "scheduler.warmup_steps=4", "trainer.log_every=4",
              "trainer.eval_every=6", "trainer.max_steps=16"]
    experiment.run_train(compose_config(*common, "trainer.keep_last=3"), tmp_path / "whole")
    experiment.run_train(compose_config(*common, f"ckpt_path={tmp_path}/whole/checkpoints/step_6.pt"),
                         tmp_path / "resumed")
    expected, got = losses(tmp_path / "whole"), losses(tmp_path / "resumed")
    assert sorted(got) == [8, 12, 16]
    assert [got[s] for s in (8, 12, 16)] == [expected[s] for s in (8, 12, 16)]  # bit for bit


def test_the_logged_learning_rate_of_each_step_is_the_rate_its_update_used(compose_config, tmp_path):
    """train/lr at step s is optimizer.lr times the schedule at step s (counted from 1), as the NaN message and the
    schedule's own test count it: not the rate of step s + 1, which the schedule holds once step s is done."""
    experiment.run_train(compose_config(*FAST, "optimizer.lr=0.01", "scheduler.warmup_steps=4", "trainer.log_every=1",
                                        "trainer.max_steps=8", "trainer.eval_every=8"), tmp_path / "run")
    logged = {e.step: e.value for e in EventAccumulator(str(tmp_path / "run")).Reload().Scalars("train/lr")}
    expected = {step: 0.01 * cosine(step, 4, 8, 0.0) for step in range(1, 9)}
    assert logged == pytest.approx(expected, rel=1e-6)
    assert logged[4] == pytest.approx(0.01)  # the peak, at the end of the warmup


# SIGUSR2 (exit 140, the same message) is sent in test_processes.py's requeue test
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_saves_a_checkpoint_and_says_how_to_resume(tmp_path, sig, code):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from playground.checks import check_overrides

    run_dir = tmp_path / "0_model.heads=2,seed=1"  # a sweep job's folder name: "=" and "," in the checkpoint's path
    process = start(*FAST, "trainer.max_steps=100000", "trainer.checkpoint_every=5", f'hydra.run.dir="{run_dir}"')
    wait_for(run_dir / "checkpoints" / "last.pt", process)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert f"stopped at step {last['step']} by {sig.name}" in stderr
    assert "Traceback" not in stderr
    command = shlex.split(stderr.split("resume with: ")[1].splitlines()[0])  # as a shell would pass it on
    assert command[:2] == ["python", "transformer_playground.py"]
    check_overrides(command[2:])  # Hydra reads every word of it
    given = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(command[2:])}
    assert given["ckpt_path"] == str(run_dir / "checkpoints" / "last.pt")


def test_a_killed_run_leaves_a_checkpoint_that_loads(tmp_path):
    process = start(*FAST, "trainer.max_steps=100000", "trainer.checkpoint_every=1", f"hydra.run.dir={tmp_path}/r")
    wait_for(tmp_path / "r" / "checkpoints" / "last.pt", process)
    time.sleep(1.0)  # let it write many more checkpoints, then kill it mid-way through one, probably
    process.kill()
    process.communicate()
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] >= 1 and "optimizer" in state


def test_a_loss_that_blows_up_stops_the_run_naming_the_step_and_learning_rate(compose_config, tmp_path):
    # a UserError: the command line prints it as one line and exits 2 (test_cli.py)
    with pytest.raises(UserError, match=r"^train/loss is not finite at step \d+ \(lr 1e\+12\)"):
        experiment.run_train(compose_config(*FAST, "optimizer.lr=1e12", "scheduler=constant", "trainer.grad_clip=0",
                                            "trainer.max_steps=200", "trainer.log_every=10"), tmp_path / "nan")
    assert not (tmp_path / "nan" / "checkpoints").exists()  # nothing trained on garbage was saved


def test_skipping_non_finite_steps_lets_the_run_finish_and_counts_them(compose_config, tmp_path):
    experiment.run_train(compose_config(*FAST, "optimizer.lr=1e12", "scheduler=constant", "trainer.grad_clip=0",
                                        "trainer.max_steps=30", "trainer.on_nonfinite=skip"), tmp_path / "skip")
    skipped = EventAccumulator(str(tmp_path / "skip")).Reload().Scalars("train/skipped_steps")
    assert skipped[-1].value >= 1


def test_a_skipped_step_is_still_evaluated_and_saved(compose_config, tmp_path):
    # after the first update at lr 1e12 every loss is not finite: steps 3 and 6 are skipped, and still evaluated
    experiment.run_train(compose_config(*FAST, "optimizer.lr=1e12", "scheduler=constant", "trainer.grad_clip=0",
                                        "trainer.max_steps=6", "trainer.eval_every=3", "trainer.on_nonfinite=skip"),
                         tmp_path / "skip")
    events = EventAccumulator(str(tmp_path / "skip")).Reload()
    assert [e.step for e in events.Scalars("train/skipped_steps")][-2:] == [5, 6]
    assert [e.step for e in events.Scalars("valid/loss")] == [3, 6]
    assert torch.load(tmp_path / "skip" / "checkpoints" / "last.pt", weights_only=True)["step"] == 6


@pytest.mark.parametrize("loss_scaling", [False, True])  # True: fp16's GradScaler, which must see each step end
def test_skip_mode_skips_a_step_whose_gradients_are_not_finite_though_its_loss_is(compose_config, tmp_path,
                                                                                  loss_scaling):
    from conftest import build
    from playground.data import MODEL_IDS, load_data
    from playground.kernels import loss_function
    from playground.setup import build_optimizer, build_scheduler, resolve_recipe
    from playground.tracking import Tracker
    from playground.train import BatchStream, Training, train

    cfg = compose_config(*FAST, "trainer.max_steps=3", "trainer.eval_every=1", "trainer.on_nonfinite=skip",
                         "trainer.precision=fp32")
    data = load_data(cfg.dataset)
    model = build(cfg.model, data.src_tokenizer.vocab_size, data.tgt_tokenizer.vocab_size)
    resolve_recipe(cfg, 3)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), torch.device("cpu"))
    run_ = Training(model=model, optimizer=optimizer, scheduler=build_scheduler(cfg.scheduler, optimizer, 3),
                    scaler=torch.amp.GradScaler("cpu", enabled=loss_scaling), loss_fn=loss_function("reference"),
                    pad_id=MODEL_IDS["pad_id"], device=torch.device("cpu"))
    backward_passes = []

    def poison_the_second(grad):  # the second step's output-layer gradient turns NaN; its loss stays finite
        backward_passes.append(step := len(backward_passes) + 1)
        return grad * float("nan") if step == 2 else grad

    model.generator.weight.register_hook(poison_the_second)
    weights = []

    def on_eval(step):
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        return False

    settings = OmegaConf.to_object(cfg.trainer)
    train(run_, settings, data.splits["train"], BatchStream(data.splits["train"], settings.batch_size, cfg.seed),
          Tracker(tmp_path, enabled=False), on_eval, lambda step: None)
    after_1, after_2, after_3 = weights
    assert all(torch.equal(after_2[k], after_1[k]) for k in after_1)  # step 2 changed nothing
    assert all(torch.isfinite(w).all() for w in after_3.values())
    assert not all(torch.equal(after_3[k], after_2[k]) for k in after_2)  # step 3 trained again


def test_ctrl_c_during_the_final_test_evaluation_exits_130_keeping_the_checkpoints(compose_config, tmp_path,
                                                                                    monkeypatch):
    evaluate = experiment.evaluate

    calls = []

    def interrupted_on_test(*args, **kwargs):  # the first call is the evaluation on valid at step 4; then the test
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(experiment, "evaluate", interrupted_on_test)
    with pytest.raises(experiment.Interrupted) as stopped:
        experiment.run_train(compose_config(*FAST, "trainer.max_steps=4", "trainer.eval_every=4"), tmp_path / "r")
    assert stopped.value.exit_code == 130
    message = str(stopped.value)
    assert message.startswith("stopped by SIGINT during the final test evaluation (no metrics.json)")
    assert f"ckpt_path={tmp_path / 'r' / 'checkpoints' / 'best.pt'}" in message
    assert torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)["step"] == 4
    assert not (tmp_path / "r" / "metrics.json").exists()


@pytest.mark.parametrize("where", ["load_data", "_flops_counters"])  # before and after TensorBoard's file is made
def test_ctrl_c_before_the_first_checkpoint_is_one_line_and_leaves_no_run_directory(entry, monkeypatch, tmp_path,
                                                                                   where):
    def pressed(*args, **kwargs):  # Ctrl-C while the data is read or the model is set up: before training's handler
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, where, pressed)
    run_dir = tmp_path / "runs" / "r"
    result = entry(*FAST, "trainer.max_steps=4", f"hydra.run.dir={run_dir}")
    assert (result.returncode, result.stderr) == (130, f"interrupted (Ctrl-C) before anything was saved: {run_dir} is "
                                                       f"removed\n")  # not a traceback
    assert list(tmp_path.iterdir()) == []  # no run without a checkpoint left to show in TensorBoard


def test_the_command_line_keeps_few_onednn_primitives_unless_the_user_set_how_many(monkeypatch):
    # oneDNN's default of 1,024 kept primitives grew a bf16 CPU training process by hundreds of MB
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    probe = ("import os, runpy, sys\nsys.argv = ['transformer_playground.py', 'mode=eval']  # no ckpt_path: exits 2\n"
             "try:\n    runpy.run_path('transformer_playground.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print(os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY'))")
    shown = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
    assert shown.stdout.strip().splitlines()[-1] == str(ONEDNN_CACHE), shown.stdout + shown.stderr
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")
    bound_onednn_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "256"


def test_an_interrupted_sweep_job_says_its_resume_runs_it_alone():
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    def said(*overrides):
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            HydraConfig.instance().set_config(compose(config_name="config", overrides=["seed=2", *overrides],
                                                      return_hydra_config=True))
        try:
            return experiment._rest_of_the_sweep()
        finally:
            HydraConfig.instance().cfg = None

    assert "resumes job 1 of the sweep alone: the jobs after it did not run" in said("hydra.mode=MULTIRUN",
                                                                                     "hydra.job.num=1")
    assert said("hydra.mode=RUN") == ""  # a single run: nothing more to say
