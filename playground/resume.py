"""Resuming safely: a run resumed from a checkpoint continues the checkpoint's experiment or says why not.

A resumed run may change how long it trains, how often it logs, evaluates and saves, how it runs
(kernels, device, precision, compile) and how it evaluates and decodes (RESUME_MAY_CHANGE). A change to anything else
(the model, the data, the optimiser, the schedule, the batch, the seed), a data file whose content changed,
or another number of processes is refused in one line naming it, unless trainer.resume_override=true,
with which the run resumes and the log lists what changed.
"""

import logging
from dataclasses import fields
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, load_model_weights, set_rng_state
from .config import DecodeConfig
from .data.cache import file_sha256
from .distributed import Dist
from .errors import UserError
from .setup import OPTIMIZER_CLASSES

log = logging.getLogger(__name__)

# model.attention: the retired sdpa|math switch, now the execution setting trainer.kernels
RESUME_MAY_CHANGE = {"mode", "ckpt_path", "text", "input_file", "reference_file", "output_file", "overwrite",
                     "model.attention", "dataset.cache", "dataset.cache_dir"} | {f"trainer.{key}" for key in (
    "max_steps", "log_every", "eval_every", "checkpoint_every", "kernels", "device", "precision", "compile",
    "eval_batch_size", "num_samples", "patience", "keep_last", "on_nonfinite", "monitor", "monitor_mode",
    "resume_override", "auto_resume", "progress")} | {f"decode.{field.name}" for field in fields(DecodeConfig)}
DATA_FILES = ("train_file", "valid_file", "test_file")
OVERRIDE = "trainer.resume_override=true resumes anyway"


def _flat(tree: dict, prefix: str = "") -> dict:
    """{"model": {"heads": 4}} -> {"model.heads": 4}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def data_fingerprint(dataset: dict) -> dict:
    """The size and SHA-256 of each data file the dataset config names (what the run trains and evaluates on): a
    Moses prefix's two files as `train_file.en` and `train_file.it`."""
    prints = {}
    for key in DATA_FILES:
        path = dataset.get(key)
        if not path:
            continue
        files = {key: path} if Path(path).is_file() else \
            {f"{key}.{lang}": f"{path}.{lang}" for lang in (dataset.get("src_lang"), dataset.get("tgt_lang"))}
        for name, file in files.items():
            if Path(file).is_file():
                prints[name] = {"path": str(file), "bytes": Path(file).stat().st_size, "sha256": file_sha256(file)}
    return prints


def config_changes(saved: dict, config: dict) -> list:
    """'key=new (the checkpoint: old)' for each key both configs hold whose value differs, except those in
    RESUME_MAY_CHANGE (a key only one side holds belongs to another version of the playground: not compared)."""
    before, now = _flat(saved), _flat(config)
    return [f"{key}={now[key]} (the checkpoint: {before[key]})" for key in sorted(before.keys() & now.keys())
            if key not in RESUME_MAY_CHANGE and before[key] != now[key]]


def data_changes(saved: dict, now: dict) -> list:
    """A line for each data file whose content differs from the checkpoint's record of it (none recorded: none)."""
    changes = []
    for key, record in (saved or {}).items():
        current = now.get(key)
        path = (current or record)["path"]
        setting, _, lang = key.partition(".")  # train_file.en: one file of a Moses prefix
        where = f"dataset.{setting}={path[:-len(lang) - 1]}: {path}" if lang else f"dataset.{key}={path}"
        if current is None:
            changes.append(f"{where} is not there any more")
        elif current["sha256"] != record["sha256"]:
            changes.append(f"{where} has changed since the checkpoint was written "
                           f"({record['bytes']:,} bytes then, {current['bytes']:,} now; compared by SHA-256)")
    return changes


HELD_OUT_KEYS = ("seed", "valid_fraction", "test_fraction")  # with the training file, they draw the held-out pairs


def check_held_out_test(path, dataset, saved_dataset, saved_data: dict) -> None:
    """eval of a test split held out of the training file (no dataset.test_file) scores the pairs the checkpoint's
    run held out only where the file's content and the keys that drew them are the run's: otherwise other pairs
    are drawn, some of which it trained on, and the scores are inflated without a word. Refused in one line."""
    if dataset.get("test_file"):
        return
    drawn = [f"dataset.{key}={dataset.get(key)} (the checkpoint: {saved_dataset.get(key)})" for key in HELD_OUT_KEYS
             if dataset.get(key) != saved_dataset.get(key)]
    if bool(dataset.get("valid_file")) != bool(saved_dataset.get("valid_file")):  # valid is held out first, or not
        drawn.append(f"dataset.valid_file={dataset.get('valid_file')} (the checkpoint: "
                     f"{saved_dataset.get('valid_file')})")
    now = data_fingerprint(dataset)  # a training file that is not there is named by the data loading
    drawn += data_changes({key: record for key, record in (saved_data or {}).items()
                           if key.partition(".")[0] == "train_file" and key in now}, now)
    if drawn:
        raise UserError(f"{drawn[0]}: the test pairs are held out of the training file, so these would not be the "
                        f"pairs the run of ckpt_path={path} held out, and some would be pairs it trained on (give "
                        f"the test pairs as dataset.test_file=PATH)")


def check_resume(path, saved_config: dict, config: dict, saved_data: dict, data: dict, override: bool,
                 in_place: bool = False) -> list:
    """Refuse to resume checkpoint `path` into a different experiment, in one line; with override, return the
    changes for the log instead. in_place: trainer.auto_resume found the checkpoint in this run's directory."""
    changes = config_changes(saved_config, config) + data_changes(saved_data, data)
    if changes and not override:
        what = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
        fresh = ("start a new run in its own directory, hydra.run.dir=..." if in_place else
                 "start a new run without ckpt_path")
        found = f"{path} (trainer.auto_resume=true found it in this run directory)" if in_place else path
        raise UserError(f"ckpt_path={found} was trained differently: {what}. Resuming would continue another "
                        f"experiment than it began ({OVERRIDE}, or {fresh})")
    return changes


def check_world_size(path, saved: int, world_size: int, override: bool) -> bool:
    """Whether each process can take back its own random state: a checkpoint written by another number of
    processes is refused, or with override resumed with fresh random states (returns False)."""
    if saved == world_size:
        return True
    if not override:
        raise UserError(f"ckpt_path={path} was written by {saved} process{'es' * (saved != 1)} and this run has "
                        f"{world_size}: resume with {saved} (torchrun --nproc_per_node={saved}) to continue exactly "
                        f"({OVERRIDE}, each process with a fresh random state)")
    return False


def apply_learning_rate(optimizer, scheduler, lr: float) -> None:
    """Make a changed optimizer.lr the schedule's peak: a restored LambdaLR would otherwise keep the old one."""
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
        group["lr"] = lr * scheduler.lr_lambdas[0](scheduler.last_epoch)


def restore_training_state(state, path, model, optimizer, scheduler, scaler, t, d: Dist, seed: int):
    """Put a training checkpoint's weights, optimiser, schedule and random generators back; return (step, data
    position). Each process takes back its own generators where the number of processes is the checkpoint's."""
    if "optimizer" not in state or "data_position" not in state:
        raise UserError(f"ckpt_path={path} holds weights only, not a training state to resume from")
    load_model_weights(model, state["model"], path)
    restore_optimizer(optimizer, state, path, d)
    scheduler.load_state_dict(state["scheduler"])
    # a fresh optimizer's rate: this run's schedule at the next step, whose length is this run's trainer.max_steps
    # (the checkpoint's last rate would be the cosine of its own length, 0 at its end, for the first resumed step)
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = scheduler.base_lrs[i] * scheduler.lr_lambdas[i](scheduler.last_epoch)
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if state["step"] >= t.max_steps:
        raise UserError(f"ckpt_path={path} is at step {state['step']}, and trainer.max_steps={t.max_steps}: "
                        f"raise trainer.max_steps to train further")
    rngs = state["rng"]
    if check_world_size(path, len(rngs), d.world_size, t.resume_override):
        set_rng_state(rngs[d.rank])  # each process its own generators back: the run continues exactly
    else:
        torch.manual_seed(seed + 1000 * state["step"] + d.rank)  # a fresh random state for each process
    return state["step"], state["data_position"]


CONFIGURED_SETTINGS = ("betas", "eps", "weight_decay", "momentum")  # optimizer.* keys a param group holds, lr aside


def restore_optimizer(optimizer, state, path, d: Dist) -> None:
    """The checkpoint's optimizer state (Adam's moments, SGD's momentum) back into `optimizer`, which was built from
    this run's config. Its hyperparameters stay this run's (a resume_override may change betas, eps, weight_decay,
    momentum) but for the learning rate, which the schedule carries on. Another optimizer (allowed by
    trainer.resume_override) starts afresh: one algorithm's state means nothing to another."""
    saved, now = state["config"].get("optimizer", {}).get("name"), OPTIMIZER_CLASSES.get(type(optimizer))
    if saved and now and saved != now:
        if d.is_main:
            log.warning(f"optimizer.name={now} (the checkpoint: {saved}): the optimizer's state starts afresh; the "
                        f"weights, the schedule's step and the data position are the checkpoint's")
        return
    # only what build_optimizer takes from optimizer.*: fused, foreach and capturable stay as the state was loaded
    ours = [{k: group[k] for k in CONFIGURED_SETTINGS if k in group} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as e:
        raise UserError(f"ckpt_path={path}: its optimizer state does not fit optimizer.name={now} ({e})")
    for group, settings in zip(optimizer.param_groups, ours):
        group.update(settings)


def best_checkpoint(path, state: dict, best: dict):
    """(the checkpoint holding the weights of the best evaluation that `state`, read from `path`, records, its file):
    `state` itself where that is its own step, else the best.pt or step_N.pt beside it written at that step (a best.pt
    written later, after the step resumed from, is another branch's). (None, None) where none is there, or where no
    best is recorded."""
    step = best.get("step")
    if step is None:
        return None, None
    if step == state["step"]:
        return state, Path(path)
    for name in ("best.pt", f"step_{step}.pt"):
        candidate = Path(path).with_name(name)
        if candidate.is_file():
            try:
                found = load_checkpoint(candidate)
            except UserError:
                continue
            if found["step"] == step:
                return found, candidate
    return None, None


def restore_monitor(monitor, state: dict, best: dict) -> None:
    """The record of `monitor` (a train.Monitor) from a checkpoint; one written before trainer.monitor chose best.pt by exact match."""
    if "monitor" in state:
        monitor.load_state_dict(state["monitor"])
    name = monitor.metric.removeprefix("valid/")
    if monitor.best is None and name in best and "step" in best:
        monitor.best, monitor.best_step = best[name], best["step"]
