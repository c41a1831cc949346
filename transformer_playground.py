"""Train, evaluate and use the Transformer of "Attention Is All You Need": `python transformer_playground.py --help`."""

import atexit
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from playground.checks import check_overrides
from playground.config import register_configs
from playground.errors import UserError
from playground.rundir import run_file_in, undo_interrupted_run, undo_refused_run
from playground.sweep import FAILED

register_configs()


def _take_text(argv) -> str | None:
    """Take `text=...` off the command line before Hydra's parser sees it, so that any text passes as the shell
    gives it: commas (which Hydra reads as a list), apostrophes, accents, `!`. One pair of quotes around the value
    (Hydra's own quoting, text='"Hello, world!"') is removed."""
    given = [a for a in argv[1:] if a.startswith("text=")]
    if len(given) > 1:
        print(f"error: text= is given {len(given)} times: translate one text at a time (or use input_file=PATH)",
              file=sys.stderr)
        sys.exit(2)
    text = None
    for arg in given:
        argv.remove(arg)
        text = arg[len("text="):]
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1]
        raw = os.fsencode(text)  # the bytes the shell gave: Python keeps those that are not UTF-8 as surrogates
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            print(f"error: text= is not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}): set the "
                  f"terminal to UTF-8, or give the text in a UTF-8 file as input_file=PATH", file=sys.stderr)
            sys.exit(2)
    return text


def _writes_nothing_that_lasts(argv) -> bool:
    """Other processes than rank 0 under torchrun (their run directories would go unused), and translate and score
    unless given hydra.run.dir=...: Hydra's run directory goes to a temporary folder, removed at exit."""
    if int(os.environ.get("RANK", "0")) > 0:
        return True
    asked = any(a.startswith(("hydra.run.dir=", "hydra/job_logging=", "hydra.job.chdir=")) or a in ("-m", "--multirun")
                for a in argv)
    return not asked and any(a in ("mode=translate", "mode=score") for a in argv)


def _check_overrides(argv) -> None:
    """A misspelt key, a value of the wrong type or a group option that does not exist (in a sweep, any of its jobs'
    values that a run would refuse): one line and exit 2, before Hydra's report of several lines or the sweep's
    first job. HYDRA_FULL_ERROR=1 leaves every error to Hydra, with its traceback."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    try:
        check_overrides(argv[1:])
    except UserError as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from the first process, not one from each
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


TEXT = _take_text(sys.argv)
_check_overrides(sys.argv)
if _writes_nothing_that_lasts(sys.argv):
    scratch = tempfile.mkdtemp(prefix="playground-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    sys.argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null", "hydra/job_logging=disabled",
                 "hydra/hydra_logging=disabled"]


def _refused_trial_value(sweeper) -> float | None:
    """What a refused sweep job returns: nothing to Hydra's basic sweeper; to Optuna, the worst value in the study's
    direction, so that the study records the trial, learns to avoid its region and goes on (a trial that returned no
    number would count as a failure, and a study whose trials all failed ends in a traceback)."""
    direction = sweeper.get("direction")
    if not sweeper._target_.endswith(".OptunaSweeper") or not isinstance(direction, str):
        return None
    return float("-inf") if direction.lower() == "maximize" else float("inf")


# an absolute path: the same folder whether this file runs as a script or as the installed transformer-playground
@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "configs"), config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        return _run(cfg)
    except KeyboardInterrupt:  # Ctrl-C before training's own handler (reading data, building the model), or a second
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        run_dir = HydraConfig.get().runtime.output_dir
        if "playground.tracking" in sys.modules:  # its event file, whole, before the run directory is judged
            sys.modules["playground.tracking"].close_all()
        if undo_interrupted_run(run_dir):
            print(f"interrupted (Ctrl-C) before anything was saved: {run_dir} is removed", file=sys.stderr)
        else:
            print(f"interrupted (Ctrl-C): what was saved before it is in {run_dir}", file=sys.stderr)
        sys.exit(130)


def _note_in_run_log(run_dir, message: str) -> None:
    """Write `message` into the log file of a run directory that outlives the refusal (a used one, whose log the
    refused command had begun to write: "resuming this run directory from ..." would otherwise read as a resume),
    and only there: the console has the error line."""
    for handler in logging.getLogger().handlers:
        if (isinstance(handler, logging.FileHandler) and Path(run_dir).is_dir()
                and Path(handler.baseFilename).parent == Path(run_dir).resolve()):
            handler.emit(logging.LogRecord("playground", logging.ERROR, __file__, 0, message, None, None))


def _run(cfg: DictConfig) -> float | None:
    from playground import average, experiment, export, inference  # after Hydra has parsed the command line: --help stays fast
    from playground.setup import bound_onednn_cache

    bound_onednn_cache()  # before any computation: oneDNN reads it once

    run_dir = HydraConfig.get().runtime.output_dir
    if TEXT is not None:
        cfg.text = TEXT
    hydra_cfg = HydraConfig.get()
    # a job of a sweep that a refusal does not stop (Hydra's basic sweeper; Optuna's, which records the trial as failed
    # and asks for the next): not one whose folder holds an earlier run (a sweep repeated into its own folder stops at
    # the first job, and no finished run is marked refused)
    goes_on = (hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.sweeper._target_.endswith((".BasicSweeper", ".OptunaSweeper"))
               and run_file_in(Path(run_dir)) is None)
    if goes_on:
        (Path(run_dir) / FAILED).unlink(missing_ok=True)  # an earlier refusal of this job is not this one's
    try:
        if cfg.mode == "train":
            flat = experiment.run_train(cfg, run_dir)
            return flat.get(flat["monitor"])  # what sweepers optimise: the best value of trainer.monitor
        if cfg.mode == "eval":
            return experiment.run_eval(cfg, run_dir)["test/exact_match"]
        if cfg.mode == "translate":
            return inference.run_translate(cfg)
        if cfg.mode == "score":
            return inference.run_score(cfg)
        if cfg.mode == "average":
            return average.run_average(cfg, run_dir)
        if cfg.mode == "export":
            return export.run_export(cfg, run_dir)
        raise UserError(f"mode={cfg.mode} is not one of: train, eval, translate, score, average, export")
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if goes_on:
            print(f"error: job {hydra_cfg.job.num}: {e}", file=sys.stderr)  # this job only: the sweep goes on,
            (Path(run_dir) / FAILED).write_text(f"{e}\n")  # and its summary names the job and the reason
            return _refused_trial_value(hydra_cfg.sweeper)
        undo_refused_run(run_dir)  # the run directory it made is removed; a used one's .hydra/ record is put back
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from the first process, not one from each
            _note_in_run_log(run_dir, f"refused: {e}")
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except experiment.Interrupted as e:
        if str(e):
            print(e, file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
