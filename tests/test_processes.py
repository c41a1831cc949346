"""Runs of several processes (torchrun) and jobs a cluster stops and starts again."""

import json
import logging
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import contextlib
import itertools

import pytest
import torch
from omegaconf import OmegaConf

from conftest import build
from playground import experiment, resume
from playground import train as train_module
from playground.checkpoint import rng_state
from playground.data import MODEL_IDS, load_data
from playground.distributed import Dist
from playground.evaluate import evaluate
from playground.kernels import loss_function
from playground.setup import build_optimizer, build_scheduler, resolve_recipe
from playground.train import BatchStream, carried_position
from test_reliability import ENTRY, FAST, losses, start, wait_for


@pytest.mark.slow
def test_a_requeued_job_resumes_itself_from_its_own_directory_exactly(compose_config, tmp_path, caplog):
    common = [*FAST, "model.dropout=0.1", "scheduler=noam", "scheduler.warmup_steps=10", "trainer.log_every=1",
              "trainer.max_steps=30", "trainer.eval_every=15", "trainer.checkpoint_every=5", "trainer.auto_resume=true"]
    experiment.run_train(compose_config(*common), tmp_path / "whole")  # here: only the job is a process of its own
    job = tmp_path / "job"
    process = start(*common, f"hydra.run.dir={job}")  # SLURM warns a job with SIGUSR2, then requeues it
    wait_for(job / "checkpoints" / "last.pt", process)
    process.send_signal(signal.SIGUSR2)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 140, stderr
    stopped_at = torch.load(job / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert f"resume with: python transformer_playground.py {' '.join(common)} hydra.run.dir={job}" in stderr
    with caplog.at_level(logging.INFO, logger="playground.experiment"):  # the same run, into the same directory:
        experiment.run_train(compose_config(*common), job)  # here, as the requeued command would call it
    assert f"trainer.auto_resume=true: resuming this run directory from {job / 'checkpoints' / 'last.pt'}" in \
        caplog.text
    expected, got = losses(tmp_path / "whole"), losses(job)
    assert stopped_at < 30 and sorted(got) == list(range(1, 31))
    assert [got[s] for s in range(1, 31)] == [expected[s] for s in range(1, 31)]  # bit for bit, both segments


@pytest.mark.slow
def test_two_processes_train_as_one_of_twice_the_batch_and_after_a_sigterm_resume_exactly(compose_config, tmp_path):
    # one thread everywhere (torchrun's own default): the sums are then ordered alike, the processes aside. Dropout 0:
    # one process of batch 2B would draw other dropout masks than two of batch B (that each process takes back its
    # own random generators is test_each_process_takes_back_its_own_random_generators_on_resume, below)
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", ENTRY]
    # noam's rate does not depend on max_steps: the stopped run (max_steps 100000) and the whole one (18) agree.
    # 18 steps of 16 stay inside the first epoch of 300 examples, which one process and two end alike
    common = [o for o in FAST if not o.startswith("trainer.batch_size")] + [
        "model.dropout=0.0", "trainer.precision=fp32", "trainer.device=cpu", "trainer.log_every=1", "scheduler=noam",
        "scheduler.warmup_steps=10", "trainer.eval_every=18"]

    def launch(*args, wait=True):
        process = subprocess.Popen([*torchrun, *common, "trainer.batch_size=8", *args], cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        if wait:
            _, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr[-3000:]
        return process

    launch("trainer.max_steps=18", f"hydra.run.dir={tmp_path}/two")
    run_dir = tmp_path / "two"  # one run directory for both processes
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # only rank 0 logs
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 18
    assert not (tmp_path / "outputs").exists()  # the other rank made no run directory of its own
    assert "2 processes" in (run_dir / "transformer_playground.log").read_text()
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["data_position"] == 18
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the one process runs here: its start-up is not what is tested
        experiment.run_train(compose_config(*common, "trainer.batch_size=16", "trainer.max_steps=18"), tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    together, alone = losses(run_dir), losses(tmp_path / "one")
    assert sorted(together) == sorted(alone) == list(range(1, 19))
    torch.testing.assert_close(torch.tensor([together[s] for s in range(1, 19)]),
                               torch.tensor([alone[s] for s in range(1, 19)]), rtol=1e-5, atol=0)

    # no log step before step 1000: on the CPU the processes still agree to stop at the step the signal came in
    # (torchrun kills them 30 s after Ctrl-C, which 50 log steps of a large model outlast)
    common[common.index("trainer.log_every=1")] = "trainer.log_every=1000"
    stopped = launch("trainer.max_steps=100000", "trainer.checkpoint_every=2", f"hydra.run.dir={tmp_path}/r",
                     wait=False)
    common[common.index("trainer.log_every=1000")] = "trainer.log_every=1"
    wait_for(tmp_path / "r" / "checkpoints" / "last.pt", stopped)
    stopped.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    _, stderr = stopped.communicate(timeout=120)
    assert stopped.returncode != 0 and "Traceback" not in stderr.split("resume with:")[0], stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == ["last.pt"]  # one, by rank 0
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    step = state["step"]
    assert 2 <= step < 18 and len(state["rng"]) == 2  # each process's random state
    assert f"stopped at step {step} by SIGTERM" in stderr
    assert stderr.count("resume with:") == 1  # from the first process only, and with as many processes again
    assert "resume with: torchrun --nproc_per_node=2 transformer_playground.py " in stderr
    launch("trainer.max_steps=18", f"ckpt_path={tmp_path}/r/checkpoints/last.pt", f"hydra.run.dir={tmp_path}/resumed")
    got = losses(tmp_path / "resumed")
    assert sorted(got) == list(range(step + 1, 19))
    assert [got[s] for s in got] == [together[s] for s in got]  # bit for bit


def test_each_process_takes_back_its_own_random_generators_on_resume(monkeypatch):
    saved = []
    for seed in (1, 2):  # what rank 0 and rank 1 had drawn up to the checkpoint
        torch.manual_seed(seed)
        torch.rand(5)
        saved.append(rng_state())
    expected = torch.rand(3)  # rank 1's next draws
    monkeypatch.setattr(resume, "load_model_weights", lambda *args: None)  # no model or optimizer here: the
    monkeypatch.setattr(resume, "restore_optimizer", lambda *args: None)  # generators are what is tested
    state = {"optimizer": {}, "data_position": 32, "model": {}, "scheduler": {}, "step": 2, "rng": saved}
    scheduler = SimpleNamespace(load_state_dict=lambda s: None, get_last_lr=lambda: [])
    trainer = SimpleNamespace(max_steps=10, resume_override=False)
    torch.manual_seed(0)
    step, position = resume.restore_training_state(state, "last.pt", None, SimpleNamespace(param_groups=[]), scheduler,
                                                   None, trainer, Dist(rank=1, world_size=2, enabled=True), seed=0)
    assert (step, position) == (2, 32)
    assert torch.equal(torch.rand(3), expected)


def test_a_process_whose_share_of_a_small_split_is_empty_adds_nothing_to_its_metrics(compose_config):
    # a validation split of 1 pair under 2 processes: rank 0 evaluates the pair, rank 1 none, and both report the
    # metrics of that one pair (rank 1 used to fail on its empty batch, after all the training)
    cfg = compose_config(*FAST, "dataset.num_valid=1")
    data = load_data(cfg.dataset)
    torch.manual_seed(0)
    model = build(cfg.model, data.src_tokenizer.vocab_size, data.tgt_tokenizer.vocab_size)
    valid, cpu = data.splits["valid"], torch.device("cpu")
    shares = torch.arange(len(valid)).tensor_split(2)  # as experiment._evaluator splits a split's rows
    kept = []  # rank 0's totals, to add to rank 1's as the sum across processes does
    first, predictions = evaluate(model, valid, 8, cpu, contextlib.nullcontext, rows=shares[0],
                                  reduce=lambda totals: kept.append(totals.clone()))  # rank 1 adds 0 to these
    second, nothing = evaluate(model, valid, 8, cpu, contextlib.nullcontext, rows=shares[1],
                               reduce=lambda totals: totals.add_(kept[0]))
    alone, _ = evaluate(model, valid, 8, cpu, contextlib.nullcontext)
    assert len(predictions) == 1 and nothing == []
    assert first == second == alone


def test_every_process_logs_the_throughput_of_all_processes_data(compose_config, monkeypatch):
    # each rank of 2 with batch 8 sees other rows than the other; both log the target tokens of both per second, as
    # one process of batch 16 over the same rows does (a clock that ticks once a reading: the same elapsed time)
    cfg = compose_config(*FAST, "trainer.max_steps=2", "trainer.log_every=1", "trainer.progress=off",
                         "trainer.precision=fp32", "model.dropout=0.0")
    data = load_data(cfg.dataset)
    train_split = data.splits["train"]
    resolve_recipe(cfg, 2)

    def throughput(batch_size, d):
        torch.manual_seed(0)
        model = build(cfg.model, data.src_tokenizer.vocab_size, data.tgt_tokenizer.vocab_size)
        optimizer = build_optimizer(cfg.optimizer, model.parameters(), torch.device("cpu"))
        run = train_module.Training(model=model, optimizer=optimizer, scheduler=build_scheduler(cfg.scheduler, optimizer, 2),
                                    scaler=torch.amp.GradScaler("cpu", enabled=False), loss_fn=loss_function("reference"),
                                    pad_id=MODEL_IDS["pad_id"], device=torch.device("cpu"), dist=d)
        logged = []
        tracker = SimpleNamespace(scalars=lambda values, step: logged.append(values.get("perf/tokens_per_sec")))
        batches = train_module.BatchStream(train_split, batch_size, cfg.seed, d.world_size, d.rank)
        with monkeypatch.context() as m:
            m.setattr(train_module.time, "perf_counter", itertools.count().__next__)
            train_module.train(run, OmegaConf.to_object(cfg.trainer), train_split, batches, tracker,
                               lambda step: False, lambda step: None)
        return [value for value in logged if value is not None]

    rank_0 = throughput(8, Dist(rank=0, world_size=2))  # not enabled: no process group, the rows of a rank of 2
    rank_1 = throughput(8, Dist(rank=1, world_size=2))
    alone = throughput(16, Dist())
    assert len(alone) == 2 and rank_0 == rank_1 == alone


@pytest.mark.parametrize("before, after", [(1, 2), (2, 1), (2, 4)])
@pytest.mark.parametrize("steps", [5, 40])  # in the first epoch; in a later one
def test_a_run_resumed_with_another_number_of_processes_goes_on_where_its_epoch_stopped(compose_config, before, after,
                                                                                       steps):
    # trainer.resume_override=true: the epoch the checkpoint was in goes on after the pairs its processes had seen,
    # rounded down to a whole step of the new processes (some seen again, none skipped), not at the step number
    train_split = load_data(compose_config(*FAST).dataset).splits["train"]  # 300 pairs, batches of 8 per process
    streams = [BatchStream(train_split, 8, 7, before, rank) for rank in range(before)]
    for _ in range(steps):
        for stream in streams:
            next(stream)
    epoch, done = streams[0]._epoch, (steps - streams[0]._start) * before * 8  # pairs of this epoch seen
    position = carried_position(train_split, steps, (7, 8, 0, before), (7, 8, 0, after))
    resumed = [BatchStream(train_split, 8, 7, after, rank, position) for rank in range(after)]
    rows = torch.cat([next(stream) for stream in resumed])  # the first step after the resume, every process's rows
    order = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(7 + epoch))
    start = done // (after * 8) * after * 8
    assert resumed[0]._epoch == epoch and torch.equal(rows, order[start:start + after * 8])


def test_a_sweep_under_torchrun_is_refused_in_one_line_from_the_first_process(entry, monkeypatch, tmp_path):
    # every process would run a sweep of its own (and its own multirun folder); the second job's DDP used to hang
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, said in (("0", "error: a sweep (-m) does not run under torchrun: start torchrun once for each job"),
                       ("1", "")):
        monkeypatch.setenv("RANK", rank)
        result = entry("-m", *FAST, "trainer.max_steps=2", "model.heads=1,2", f"hydra.sweep.dir={tmp_path}/sweep",
                       cwd=tmp_path)
        assert result.returncode == 2 and result.stderr.startswith(said) and result.stderr.count("\n") == bool(said)
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "multirun").exists()
