"""mode=average: the weights of a run's last checkpoints averaged into one (the paper's last 5, Section 6.1)."""

import logging
from pathlib import Path

from .checkpoint import check_same_parameters, load_checkpoint, save_checkpoint, step_checkpoints
from .config import upgrade_saved_config
from .errors import UserError
from .inference import refuse_unused_overrides
from .resume import config_changes
from .rundir import log_file_only, pasted_override

log = logging.getLogger(__name__)


def run_average(cfg, run_dir: Path) -> Path:
    """Average the weights of the step_N.pt checkpoints in ckpt_path (a run's checkpoints folder, or the run
    directory) into checkpoints/averaged.pt of this run directory: a weights-only checkpoint for eval and translate.

    Averaging the last few checkpoints of a run smooths out the noise of the last updates (the paper averaged the
    last 5 checkpoints of its base models, Section 6.1); train with trainer.keep_last=K to keep K of them."""
    if cfg.ckpt_path is None:
        raise UserError("mode=average needs ckpt_path=FOLDER (a run's checkpoints folder, trained with trainer.keep_last=K)")
    refuse_unused_overrides(cfg)
    folder = Path(cfg.ckpt_path)
    if (folder / "checkpoints").is_dir():
        folder = folder / "checkpoints"
    if not folder.is_dir():
        raise UserError(f"ckpt_path={folder}: not a folder (mode=average reads the step_N.pt files of a checkpoints folder)")
    files = step_checkpoints(folder)
    if len(files) < 2:
        raise UserError(f"ckpt_path={folder} holds {len(files)} step_N.pt checkpoint{'s' * (len(files) != 1)}, and "
                        f"averaging needs at least 2 (train with trainer.keep_last=5 to keep the last 5 evaluations)")
    states = [load_checkpoint(f) for f in files]
    latest = states[-1]  # its config, vocabulary and step describe the average
    for f, state in zip(files, states):
        # another run of the same shape (another seed, learning rate or data) differs in what a resume may not change
        changes = config_changes(upgrade_saved_config(latest["config"]), upgrade_saved_config(state["config"]))
        data, latest_data = state.get("data") or {}, latest.get("data") or {}  # each data file's SHA-256
        changes += [f"dataset.{key} of other content (by SHA-256)" for key in sorted(data.keys() & latest_data.keys())
                    if data[key]["sha256"] != latest_data[key]["sha256"]]
        if changes:
            raise UserError(f"{f}: trained differently from {files[-1].name}, so not a checkpoint of the same run: "
                            f"{'; '.join(changes[:3]).replace('the checkpoint:', files[-1].name + ':')}: only "
                            f"checkpoints of one run average")
        if state["tokenizers"] != latest["tokenizers"]:
            raise UserError(f"{f}: another vocabulary than {files[-1]}: only checkpoints of one run average")
        check_same_parameters(latest["model"], state["model"], f, what=files[-1].name)
    averaged = {name: _mean([state["model"][name] for state in states]) for name in latest["model"]}
    out = Path(run_dir) / "checkpoints" / "averaged.pt"
    save_checkpoint(out, {"model": averaged, "config": latest["config"], "tokenizers": latest["tokenizers"],
                          "step": latest["step"], "averaged_steps": [state["step"] for state in states]})
    steps = ", ".join(str(state["step"]) for state in states)
    print(f"averaged the weights of steps {steps} into {out.resolve()}\n"
          f"evaluate it with: python transformer_playground.py mode=eval "
          f"{pasted_override('ckpt_path', out.resolve())}")
    log_file_only(log, f"averaged the weights of steps {steps} of {folder} into {out}")
    return out


def _mean(tensors):
    """The element-wise mean of floating-point tensors (summed in float64, returned in their dtype); any other
    tensor (an integer buffer) is taken from the last checkpoint."""
    if not tensors[-1].is_floating_point():
        return tensors[-1]
    return (sum(t.double() for t in tensors) / len(tensors)).to(tensors[-1].dtype)
