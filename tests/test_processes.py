"""Runs of several processes (torchrun) and jobs a cluster stops and starts again."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from playground import experiment
from test_reliability import ENTRY, FAST, losses, run, start, wait_for


@pytest.mark.slow
def test_two_processes_of_batch_b_share_one_run_directory_and_train_as_one_process_of_batch_2b(compose_config,
                                                                                              tmp_path):
    # one thread everywhere (torchrun's own default): the sums are then ordered alike, the processes aside
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, "OMP_NUM_THREADS": "1"}
    common = [o for o in FAST if not o.startswith("trainer.batch_size")] + [
        "model.dropout=0.0", "trainer.precision=fp32", "trainer.device=cpu", "trainer.log_every=1",
        "trainer.max_steps=8", "trainer.eval_every=8"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", ENTRY, *common,
                          "trainer.batch_size=8", f"hydra.run.dir={tmp_path}/two"], cwd=tmp_path, capture_output=True,
                         text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the one process runs here: its start-up is not what is tested
        experiment.run_train(compose_config(*common, "trainer.batch_size=16"), tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    run_dir = tmp_path / "two"  # one run directory for both processes
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # only rank 0 logs
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 8
    assert not (tmp_path / "outputs").exists()  # the other rank made no run directory of its own
    assert "2 processes" in (run_dir / "transformer_playground.log").read_text()
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["data_position"] == 8
    together, alone = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert sorted(together) == sorted(alone) == list(range(1, 9))
    torch.testing.assert_close(torch.tensor([together[s] for s in range(1, 9)]),
                               torch.tensor([alone[s] for s in range(1, 9)]), rtol=1e-5, atol=0)


@pytest.mark.slow
def test_a_requeued_job_resumes_itself_from_its_own_directory_exactly(compose_config, tmp_path):
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
    requeued = run(*common, f"hydra.run.dir={job}")  # the same command, into the same directory
    assert requeued.returncode == 0, requeued.stderr
    assert f"trainer.auto_resume=true: resuming this run directory from {job / 'checkpoints' / 'last.pt'}" in \
        requeued.stderr + requeued.stdout
    expected, got = losses(tmp_path / "whole"), losses(job)
    assert stopped_at < 30 and sorted(got) == list(range(1, 31))
    assert [got[s] for s in range(1, 31)] == [expected[s] for s in range(1, 31)]  # bit for bit, both segments


@pytest.mark.slow
def test_sigterm_to_two_processes_saves_one_checkpoint_that_resumes_exactly(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", ENTRY]
    # noam's rate does not depend on max_steps: the stopped run (max_steps 100000) and the whole one (20) agree
    common = [*FAST, "trainer.batch_size=8", "model.dropout=0.1", "scheduler=noam", "scheduler.warmup_steps=10",
              "trainer.log_every=1", "trainer.eval_every=1000", "trainer.device=cpu"]

    def launch(*args, wait=True):
        process = subprocess.Popen([*torchrun, *common, *args], cwd=tmp_path, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env)
        if wait:
            _, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr[-3000:]
        return process

    launch("trainer.max_steps=20", f"hydra.run.dir={tmp_path}/whole")
    stopped = launch("trainer.max_steps=100000", "trainer.checkpoint_every=2", f"hydra.run.dir={tmp_path}/r",
                     wait=False)
    wait_for(tmp_path / "r" / "checkpoints" / "last.pt", stopped)
    stopped.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    _, stderr = stopped.communicate(timeout=120)
    assert stopped.returncode != 0 and "Traceback" not in stderr.split("resume with:")[0], stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == ["last.pt"]  # one, by rank 0
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    step = state["step"]
    assert 2 <= step < 20 and len(state["rng"]) == 2  # each process's random state
    assert f"stopped at step {step} by SIGTERM" in stderr
    launch("trainer.max_steps=20", f"ckpt_path={tmp_path}/r/checkpoints/last.pt", f"hydra.run.dir={tmp_path}/resumed")
    expected, got = losses(tmp_path / "whole"), losses(tmp_path / "resumed")
    assert sorted(got) == list(range(step + 1, 21))
    assert [got[s] for s in got] == [expected[s] for s in got]  # bit for bit
