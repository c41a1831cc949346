"""End to end: the real command in a subprocess, as a user runs it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
ENTRY = str(ROOT / "transformer_playground.py")
SMALL = ["trainer.max_steps=30", "trainer.eval_every=15", "trainer.log_every=5", "dataset.num_train=400",
         "dataset.num_valid=40", "dataset.num_test=60", "model.d_model=32", "model.d_ff=64"]


def run(*args, cwd=ROOT, stdin=None):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, ENTRY, *args], cwd=cwd, capture_output=True, text=True, input=stdin,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    result = run(*SMALL, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    return run_dir, result


def test_a_run_leaves_events_metrics_and_checkpoints_in_its_directory(trained_run):
    run_dir, result = trained_run
    events = EventAccumulator(str(run_dir)).Reload()
    assert {"train/loss", "train/lr", "valid/loss", "valid/token_accuracy", "valid/exact_match",
            "test/exact_match"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("valid/exact_match")] == [15, 30]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"test/exact_match", "test/token_accuracy", "test/loss", "step"} <= set(metrics)
    assert 0.0 <= metrics["test/exact_match"] <= 1.0
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["step"] == 30 and checkpoint["config"]["model"]["d_model"] == 32
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert f"tensorboard --logdir {run_dir}" in result.stdout
    hypotheses, references = ((run_dir / name).read_text().splitlines() for name in ("hypotheses.txt",
                                                                                      "references.txt"))
    assert len(hypotheses) == len(references) == metrics["test/pairs_scored"]  # what playground.compare pairs
    log = (run_dir / "transformer_playground.log").read_text()  # the log keeps what the console's table showed
    assert f"testing the weights of step {metrics['step']}" in log
    assert f"test/exact_match {metrics['test/exact_match']:.4f}" in log
    assert not [line for line in result.stdout.splitlines() if "[INFO]" in line and "test/loss" in line]  # a table


def test_eval_in_another_folder_reproduces_the_runs_test_metrics_and_logs_them(trained_run, tmp_path, entry):
    run_dir, _ = trained_run
    checkpoint = run_dir / "checkpoints" / "best.pt"
    result = entry("mode=eval", f"ckpt_path={checkpoint}", f"hydra.run.dir={tmp_path}/eval")
    assert result.returncode == 0, result.stderr
    trained = json.loads((run_dir / "metrics.json").read_text())
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["test/exact_match"] == pytest.approx(trained["test/exact_match"])
    assert evaluated["test/loss"] == pytest.approx(trained["test/loss"], rel=1e-5)
    log = (tmp_path / "eval" / "transformer_playground.log").read_text()
    assert f"evaluating {checkpoint} (step {evaluated['step']}) on 60 test pairs" in log
    assert f"test/loss {evaluated['test/loss']:.4f}" in log


def test_a_users_mistake_gets_one_line_and_exit_code_2(tmp_path):
    result = run("model.heads=7", f"hydra.run.dir={tmp_path}/bad")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: model.heads=7 does not divide model.d_model=128 (try 1, 2, 4, 8, 16, 32, 64)"
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "bad").exists()  # a refused run leaves no run directory behind


def test_a_run_refused_for_its_data_removes_the_folders_it_made_and_only_those(tmp_path, entry):
    (tmp_path / "outputs" / "day").mkdir(parents=True)
    (tmp_path / "outputs" / "day" / "other").mkdir()  # another run's folder beside it: kept
    missing = tmp_path / "missing.tsv"
    for run_dir in (tmp_path / "outputs" / "day" / "new", tmp_path / "outputs" / "newday" / "new"):
        result = entry("dataset=text_pairs", f"dataset.train_file={missing}", f"hydra.run.dir={run_dir}")
        assert result.returncode == 2 and f"dataset.train_file={missing}: no such file" in result.stderr
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "outputs", "outputs/day", "outputs/day/other"]


@pytest.mark.parametrize("override, message", [
    ("model.hedas=8", "error: Could not override 'model.hedas': Key 'hedas' not in 'ModelConfig' (did you mean "
                      "model.heads?)"),
    ("model.heads=abc", "error: Error merging override model.heads=abc: Value 'abc' of type 'str' could not be "
                        "converted to Integer"),
    ("dataset=reversed", "error: dataset=reversed is not one of: copy, opus_books, reverse, sort, text_pairs "
                         "(configs/dataset/)"),
    ("model.heads", "error: Error parsing override 'model.heads': missing EQUAL at '<EOF>' (write key=value)"),
    ("", "error: an empty word on the command line (a quoted shell variable that is not set?): every word after the "
         "command must be key=value; remove it")])
def test_a_misspelt_key_a_wrong_type_or_an_unknown_option_is_one_line_before_anything_runs(tmp_path, override,
                                                                                           message):
    result = run(override, f"hydra.run.dir={tmp_path}/bad")
    assert (result.returncode, result.stderr.strip(), result.stdout) == (2, message, "")  # not Hydra's 6-14 lines
    assert not (tmp_path / "bad").exists()


def test_a_sweep_with_a_value_a_run_would_refuse_stops_before_its_first_job(tmp_path):
    result = run("-m", "model.heads=4,7", "trainer.max_steps=2", f"hydra.sweep.dir={tmp_path}/sweep")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: model.heads=7 does not divide model.d_model=128 (try 1, 2, 4, 8, 16, 32, "
                                     "64) (in the sweep's job with model.heads=7 trainer.max_steps=2)")
    assert not (tmp_path / "sweep").exists()  # job 0 did not train first, only to be cut off by job 1


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_starting_a_run_in_a_used_directory_changes_nothing_there(trained_run, mode):
    run_dir, _ = trained_run
    files = [run_dir / "checkpoints" / "last.pt", run_dir / "metrics.json", run_dir / ".hydra" / "config.yaml",
             run_dir / ".hydra" / "overrides.yaml"]
    before = [f.read_bytes() for f in files]
    ckpt = [f"ckpt_path={run_dir}/checkpoints/best.pt"] if mode == "eval" else []
    result = run(*SMALL, f"mode={mode}", *ckpt, "trainer.max_steps=99", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert result.stderr == (f"error: {run_dir} already holds a run (checkpoints): refusing to write into it (give "
                             f"this run its own directory with hydra.run.dir=...)\n")
    assert [f.read_bytes() for f in files] == before  # .hydra/ included: Hydra had not written it yet


@pytest.mark.parametrize("below, reason", [("", "is a file, not a folder"), ("/run", "cannot be made (Not a directory)")])
@pytest.mark.parametrize("sweep", [False, True])
def test_a_run_or_sweep_directory_that_cannot_be_a_folder_is_one_line_and_the_file_in_its_way_is_kept(
        entry, tmp_path, below, reason, sweep):
    data = tmp_path / "train.tsv"
    data.write_text("a\tb\n")
    key, what = ("hydra.sweep.dir", "the sweep") if sweep else ("hydra.run.dir", "the run")
    result = entry(*["-m"] * sweep, "trainer.max_steps=2", f"{key}={data}{below}")  # a data file given as the folder
    assert (result.returncode, result.stderr) == (2, f"error: {key}={data}{below} {reason}: give {what} a folder "
                                                     f"with {key}=...\n")  # not Hydra's traceback
    assert data.read_text() == "a\tb\n" and sorted(tmp_path.iterdir()) == [data]


@pytest.mark.parametrize("sweep", [False, True])
def test_a_run_or_sweep_directory_on_a_full_disk_is_one_line_and_leaves_no_folder(entry, tmp_path, monkeypatch, sweep):
    import builtins

    from playground import rundir

    def full(path, *args, **kwargs):  # the first bytes written into the new folder find no space
        if Path(path).name == rundir.WRITE_PROBE:
            raise OSError(28, "No space left on device")
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(rundir, "open", full, raising=False)
    key, what = ("hydra.sweep.dir", "the sweep") if sweep else ("hydra.run.dir", "the run")
    result = entry(*["-m"] * sweep, "trainer.max_steps=2", f"{key}={tmp_path}/runs/r")
    assert (result.returncode, result.stderr) == (2, f"error: {key}={tmp_path}/runs/r cannot be written to (No space "
                                                     f"left on device): give {what} a folder it can write to with "
                                                     f"{key}=...\n")  # not Hydra's traceback as it writes .hydra/
    assert list(tmp_path.iterdir()) == []


def test_an_export_into_the_directory_of_an_earlier_export_is_refused_and_leaves_it_as_it_was(trained_run, entry,
                                                                                             tmp_path):
    run_dir, _ = trained_run
    first = entry("mode=export", f"ckpt_path={run_dir}/checkpoints/best.pt", f"hydra.run.dir={tmp_path}/export")
    assert first.returncode == 0, first.stderr
    files = sorted(f for f in (tmp_path / "export").rglob("*") if f.is_file())  # exported/*, .hydra/*, the log
    before = [f.read_bytes() for f in files]
    again = entry("mode=export", f"ckpt_path={run_dir}/checkpoints/last.pt", f"hydra.run.dir={tmp_path}/export")
    assert (again.returncode, again.stderr) == (2, f"error: {tmp_path}/export already holds a run (exported): refusing "
                                                   f"to write into it (give this run its own directory with "
                                                   f"hydra.run.dir=...)\n")
    assert [f.read_bytes() for f in files] == before  # not another checkpoint's weights in the first one's place


def test_a_refused_auto_resume_into_the_runs_own_directory_leaves_its_record_and_checkpoints_as_they_were(
        trained_run, entry):
    run_dir, _ = trained_run
    files = [run_dir / "checkpoints" / "last.pt", run_dir / "metrics.json",
             *sorted((run_dir / ".hydra").iterdir())]  # config.yaml, hydra.yaml, overrides.yaml
    before = [f.read_bytes() for f in files]
    result = entry(*SMALL, "model.d_model=64", "trainer.auto_resume=true", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: ckpt_path={run_dir / 'checkpoints' / 'last.pt'} (trainer.auto_resume=true "
                                    f"found it in this run directory) was trained differently: model.d_model=64 (the "
                                    f"checkpoint: 32)")
    assert result.stderr.endswith("or start a new run in its own directory, hydra.run.dir=...)\n")
    assert [f.read_bytes() for f in files] == before  # Hydra wrote the refused command's config: it is put back


def test_an_unreadable_last_checkpoint_names_the_way_on_which_continues_the_run_in_place(trained_run, entry, tmp_path):
    """A requeued job whose last.pt cannot be read (trainer.auto_resume=true) is refused naming the newest readable
    checkpoint, in the run's log too; the same command with that ckpt_path continues the run in its own directory,
    and TensorBoard shows each step once."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run[0], run_dir)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    command = [*SMALL, "trainer.auto_resume=true", f"hydra.run.dir={run_dir}"]
    refused = entry(*command)
    best = run_dir / "checkpoints" / "best.pt"
    assert refused.returncode == 2
    assert refused.stderr.endswith(f"resume from it with ckpt_path={best}\n") and refused.stderr.count("\n") == 1
    assert "[ERROR] - refused: ckpt_path=" in (run_dir / "transformer_playground.log").read_text()
    resumed = entry(*command, f"ckpt_path={best}")
    assert resumed.returncode == 0, resumed.stderr
    log = (run_dir / "transformer_playground.log").read_text()
    assert f"trainer.auto_resume=true: resuming this run directory from {best}" in log
    assert not [p for p in run_dir.parent.iterdir() if p != run_dir]  # no new run directory
    steps = [e.step for e in EventAccumulator(str(run_dir)).Reload().Scalars("train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 30  # the steps after best.pt's, logged again, shown once


@pytest.mark.full  # the whole default experiment: 25 s alone, 40 s beside the suite's other worker; `pytest -m full`
def test_the_default_command_learns_to_reverse_sequences(tmp_path):
    result = run(f"hydra.run.dir={tmp_path}/default")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "default" / "metrics.json").read_text())
    assert metrics["test/exact_match"] >= 0.99


def test_eval_refuses_test_data_longer_than_the_checkpoints_model_holds_before_evaluating(trained_run, tmp_path, entry):
    run_dir, _ = trained_run
    ckpt = run_dir / "checkpoints" / "best.pt"
    result = entry("mode=eval", f"ckpt_path={ckpt}", "dataset.max_len=600", f"hydra.run.dir={tmp_path}/e")
    assert result.returncode == 2
    assert result.stderr == (f"error: dataset.max_len=600 needs 601 positions but the model of ckpt_path={ckpt} has "
                             f"model.max_len=512 (lower dataset.max_len)\n")
    assert not (tmp_path / "e").exists()  # refused before Hydra's record was kept: no run directory


def test_eval_refuses_an_override_it_would_ignore(trained_run, tmp_path, entry):
    run_dir, _ = trained_run
    result = entry("mode=eval", f"ckpt_path={run_dir}/checkpoints/best.pt", "model.d_model=256",
                   f"hydra.run.dir={tmp_path}/e")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: model.d_model=256: mode=eval rebuilds the model and its tokenizers from "
                                    f"ckpt_path={run_dir}/checkpoints/best.pt and reads only its test data (dataset.* "
                                    f"keys of files may name others), in batches of trainer.eval_batch_size, so this "
                                    f"would have no effect: remove it")
    assert "Traceback" not in result.stderr and not (tmp_path / "e" / "metrics.json").exists()


def test_eval_of_a_generated_tasks_model_refuses_a_test_file_rather_than_scoring_its_generated_pairs(trained_run,
                                                                                                       tmp_path, entry):
    run_dir, _ = trained_run
    (tmp_path / "test.tsv").write_text("3 1 4\t4 1 3\n")
    result = entry("mode=eval", f"ckpt_path={run_dir}/checkpoints/best.pt", f"dataset.test_file={tmp_path}/test.tsv",
                   f"hydra.run.dir={tmp_path}/e")
    assert result.returncode == 2
    assert result.stderr == (f"error: dataset.test_file={tmp_path}/test.tsv: the model of ckpt_path={run_dir}/checkpoints/"
                             f"best.pt learnt dataset=reverse, whose test pairs are generated, so mode=eval reads no "
                             f"file: remove it\n")
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_a_kept_run_record_goes_back_only_for_its_own_refused_command_and_only_if_it_trained_nothing(tmp_path):
    from playground import rundir

    record, checkpoint = tmp_path / "a" / ".hydra", tmp_path / "a" / "checkpoints" / "last.pt"
    record.mkdir(parents=True)
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"step 10")
    (record / "config.yaml").write_text("old")

    def refused(change):
        rundir.keep_record(record, checkpoint)
        (record / "config.yaml").write_text("new")  # Hydra writes the refused command's config
        change()
        rundir.undo_refused_run(tmp_path / "a")
        return (record / "config.yaml").read_text()

    assert refused(lambda: None) == "old"
    assert refused(lambda: checkpoint.write_bytes(b"step 20, trained further")) == "new"  # it trained: kept as is
    assert refused(lambda: rundir.note_created(tmp_path / "b")) == "new"  # another run's command started since


def test_text_whose_bytes_are_not_utf8_is_refused_in_one_line_naming_the_byte():
    result = run("mode=translate", "ckpt_path=missing.pt", "text=caf\udce9")  # "café" from a Latin-1 terminal
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: text= is not UTF-8 text (byte 0xe9 at column 4): set the terminal to "
                                     "UTF-8, or give the text in a UTF-8 file as input_file=PATH")
