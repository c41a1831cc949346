"""What a type cannot check: the config's values refused in one line naming the key, before any data is read.

Hydra refuses a key that does not exist or a value of the wrong type (playground/config.py is the schema).
The rest is here: heads that do not divide d_model, an option's misspelt name, lengths the model cannot hold,
settings the chosen optimizer would not read. `check_overrides` composes the command line as Hydra will, before
Hydra does, so that a mistake is one UserError line rather than Hydra's report; `check_run_config` is what a
training run checks first, and each sweep job too.
"""

import math
import os
from dataclasses import fields

import yaml
from omegaconf import OmegaConf

from .config import MODES, RETIRED_TRAINER_KEYS, Config, DecodeConfig, compose_config, config_sections
from .errors import UserError


def check_model(model_cfg, src_vocab_size=None, tgt_vocab_size=None) -> None:
    """The model keys a type cannot check (heads dividing d_model, a variant's name, and with the vocabulary
    sizes, tying), refused in one line."""
    from playground.model import check_model_config  # here, not at the top: `--help` does not wait for torch

    if getattr(model_cfg, "attention", None) is not None:
        raise UserError(f"model.attention={model_cfg.attention} is retired: how attention is computed is an execution "
                        f"setting now, trainer.kernels=reference (the explicit Equation 1 in playground/model/) or "
                        f"trainer.kernels=fast (torch's SDPA and the CPU kernels in playground/kernels/)")
    try:
        check_model_config(model_cfg, src_vocab_size, tgt_vocab_size)
    except ValueError as e:
        raise UserError(str(e)) from None


def check_trainer(t) -> None:
    """Trainer values a type cannot check, each refused with the key's name."""
    if t.max_tokens < 0:
        raise UserError(f"trainer.max_tokens={t.max_tokens} must be 0 (use batch_size) or positive")
    for key in ("max_steps", "batch_size", "log_every", "eval_every", "eval_batch_size", "accumulate"):
        if getattr(t, key) <= 0:
            raise UserError(f"trainer.{key}={getattr(t, key)} must be positive")
    for key, meaning in (("patience", "0 (no early stopping)"), ("keep_last", "0 (keep only last.pt and best.pt)")):
        if getattr(t, key) < 0:
            raise UserError(f"trainer.{key}={getattr(t, key)} must be {meaning} or positive")
    if not 0.0 <= t.label_smoothing < 1.0:
        raise UserError(f"trainer.label_smoothing={t.label_smoothing} must be in [0, 1)")
    if t.grad_clip < 0:
        raise UserError(f"trainer.grad_clip={t.grad_clip} must be 0 (off) or positive")
    if t.checkpoint_every < 0:
        raise UserError(f"trainer.checkpoint_every={t.checkpoint_every} must be 0 (only at evaluations) or positive")
    if t.on_nonfinite not in ("stop", "skip"):
        raise UserError(f"trainer.on_nonfinite={t.on_nonfinite} is not one of: stop, skip")
    import playground.kernels  # noqa: F401 (registers "fast"); here, not at the top: `--help` does not wait for torch
    from playground.model import KERNELS

    if t.kernels not in KERNELS:  # reference, and fast (registered by importing playground.kernels)
        raise UserError(f"trainer.kernels={t.kernels} is not one of: {', '.join(KERNELS)}")


def choice_options() -> dict:
    """Every key whose value names one of a fixed set of options, with the options (each set lives beside the code
    that uses it)."""
    from playground.data.loading import TEXT_DATASETS, TOO_LONG  # here, not at the top: --help does not wait for torch
    from playground.data.parallel import FORMATS
    from playground.data.synthetic import TASKS
    from playground.data.tokenizers import TOKENIZER_KINDS
    import playground.kernels  # noqa: F401 (registers trainer.kernels=fast)
    from playground.model import KERNELS
    from playground.model.embeddings import POSITIONAL_ENCODINGS
    from playground.model.layers import ACTIVATIONS, NORM_PLACEMENTS, NORMS
    from playground.model.transformer import TIE_EMBEDDINGS
    from playground.setup import DEVICES, OPTIMIZERS, PRECISIONS, SCHEDULES
    from playground.train import PROGRESS

    return {"mode": MODES, "model.norm_position": NORM_PLACEMENTS, "model.norm": NORMS,
            "model.positional": POSITIONAL_ENCODINGS, "model.activation": ACTIVATIONS,
            "model.tie_embeddings": TIE_EMBEDDINGS, "dataset.name": (*TASKS, *TEXT_DATASETS),
            "dataset.tokenizer": TOKENIZER_KINDS, "dataset.format": FORMATS, "dataset.too_long": TOO_LONG,
            "optimizer.name": OPTIMIZERS, "scheduler.name": SCHEDULES, "trainer.device": DEVICES,
            "trainer.precision": ("auto", *PRECISIONS), "trainer.kernels": KERNELS,
            "trainer.on_nonfinite": ("stop", "skip"), "trainer.monitor_mode": (None, "max", "min"),
            "trainer.progress": PROGRESS}


def check_finite(cfg) -> None:
    """Refuse nan and inf in any number of the config (optimizer.lr=nan, decode.temperature=inf), naming the key: a
    range check such as `lr <= 0` lets nan through (every comparison with nan is false), and the value would end in
    a traceback from torch, or in a loss that is not finite blamed on the learning rate, after the run has begun."""

    def walk(node, prefix):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            name = f"{prefix}.{key}" if isinstance(node, dict) else f"{prefix}[{key}]"
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{name.lstrip('.')}={value} is not a finite number")
            walk(value, name)

    container = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else dict(cfg)
    walk({key: value for key, value in container.items() if key != "hydra"}, "")  # Hydra's own node: Hydra's


def check_choices(cfg) -> None:
    """Refuse a misspelt option (optimizer.name=adamx) in one line listing the right ones, and a number that is nan
    or inf: at the start of every mode, before any data is read or downloaded."""
    check_finite(cfg)
    for key, options in choice_options().items():
        group, _, name = key.rpartition(".")
        value = (cfg[group] if group else cfg).get(name)
        if value not in options:
            listed = ", ".join("null" if option is None else str(option) for option in options)
            raise UserError(f"{key}={value} is not one of: {listed}")


def check_decode(d, trainer_cfg=None) -> None:
    """The decode keys a type cannot check, each refused in one line; and the trainer's retired decoding keys,
    refused with the name they have now."""
    for key in RETIRED_TRAINER_KEYS:
        if trainer_cfg is not None and getattr(trainer_cfg, key, None) is not None:
            raise UserError(f"trainer.{key} is now decode.{key}: write decode.{key}={getattr(trainer_cfg, key)}")
    for key in ("length_penalty", "max_len_a", "temperature", "top_p"):  # from Python too (playground.load)
        if not math.isfinite(getattr(d, key)):
            raise UserError(f"decode.{key}={getattr(d, key)} is not a finite number")
    for key in ("beam_size", "nbest", "batch_size"):
        if getattr(d, key) <= 0:
            raise UserError(f"decode.{key}={getattr(d, key)} must be positive")
    for key in ("max_len_a", "max_len_b", "top_k", "no_repeat_ngram_size"):
        if getattr(d, key) < 0:
            raise UserError(f"decode.{key}={getattr(d, key)} must be 0 or more")
    if d.nbest > d.beam_size:
        raise UserError(f"decode.nbest={d.nbest} is more than decode.beam_size={d.beam_size}: the beam holds only "
                        f"beam_size hypotheses (raise decode.beam_size to at least {d.nbest})")
    if d.temperature <= 0:
        raise UserError(f"decode.temperature={d.temperature} must be positive (below 1 sharpens the distribution, "
                        f"above 1 flattens it; for the most likely token use decode.sampling=false)")
    if not 0.0 < d.top_p <= 1.0:
        raise UserError(f"decode.top_p={d.top_p} must be in (0, 1] (1 keeps every token)")
    if d.sampling and d.beam_size != 1:
        raise UserError(f"decode.sampling=true draws one sequence per input, so decode.beam_size={d.beam_size} "
                        f"would have no effect: sample with decode.beam_size=1, or search with decode.sampling=false")
    if d.max_len_a == 0 and d.max_len_b == 0:
        raise UserError("decode.max_len_a=0 and decode.max_len_b=0 leave no room for a single output token")
    # a setting only the other decoding reads, given a value other than the schema's default, is refused, not ignored
    for key in ("temperature", "top_k", "top_p"):
        if not d.sampling and getattr(d, key) != getattr(DecodeConfig, key):
            raise UserError(f"decode.{key}={getattr(d, key)}: only sampling reads it, and decode.sampling=false takes "
                            f"the most likely token: add decode.sampling=true (or use decode=sample), or remove it")
    if d.beam_size == 1 and d.length_penalty != DecodeConfig.length_penalty:
        raise UserError(f"decode.length_penalty={d.length_penalty}: only beam search reads it, and decode.beam_size=1 "
                        f"takes one token at a time: add decode.beam_size=4 (or use decode=beam), or remove it")


TRAINING_UNREAD_DECODE = {  # decode.* keys a training run's evaluations do not read, and what does their job there
    "batch_size": "its evaluations decode in batches of trainer.eval_batch_size, and decode.batch_size is translate's "
                  "and score's: set trainer.eval_batch_size, or remove it",
    "nbest": "its evaluations score the best hypothesis alone, and decode.nbest is translate's: remove it"}


def check_training_decode(d) -> None:
    """A training run's evaluations read every decode setting but decode.batch_size and decode.nbest: either, given a
    value other than the schema's default, is refused naming it, as eval refuses decode.batch_size, not ignored."""
    for key, why in TRAINING_UNREAD_DECODE.items():
        if getattr(d, key) != getattr(DecodeConfig, key):
            raise UserError(f"decode.{key}={getattr(d, key)}: mode=train does not read it: {why}")


def check_decode_vocabulary(d, tgt_vocab_size: int) -> None:
    """A beam wider than the tokens that can start an output (the vocabulary less PAD and BOS) would fill with
    impossible hypotheses."""
    if d.beam_size > tgt_vocab_size - 2:
        raise UserError(f"decode.beam_size={d.beam_size} is more than the {tgt_vocab_size - 2} tokens an output can "
                        f"start with (the target vocabulary less <pad> and <s>)")


DATA_FILE_KEYS = ("train_file", "valid_file", "test_file", "hub_name")  # dataset.* keys naming data to read


def unread_dataset_files(dataset_cfg) -> str | None:
    """The line a run logs where data files are given to a generated task, which reads none: forgetting
    dataset=text_pairs would otherwise train on the task without a word. (A warning, not a refusal: a sweep over
    every preset gives one command line's files to the text presets and the generated ones alike.)"""
    from playground.data.synthetic import TASKS  # here, not at the top: `--help` does not wait for torch

    given = [f"dataset.{key}={dataset_cfg[key]}" for key in DATA_FILE_KEYS
             if dataset_cfg.name in TASKS and dataset_cfg.get(key)]
    if given:
        return (f"{', '.join(given)} not read: dataset={dataset_cfg.name} generates its examples (to train on files: "
                f"dataset=text_pairs)")
    return None


def check_one_training_source(dataset_cfg) -> None:
    """Text is read from files or from the hub, not both: with dataset.hub_name set (dataset=opus_books sets it), a
    dataset.train_file would not be read, and the run would train on the hub's pairs."""
    from playground.data.synthetic import TASKS  # here, not at the top: `--help` does not wait for torch

    if dataset_cfg.name not in TASKS and dataset_cfg.train_file and dataset_cfg.hub_name:
        raise UserError(f"dataset.train_file={dataset_cfg.train_file} and dataset.hub_name={dataset_cfg.hub_name} both "
                        f"name the training pairs: give one (to train on the file, dataset=text_pairs, or "
                        f"dataset.hub_name=null)")


def check_tied_vocabulary(model_cfg, dataset_cfg) -> None:
    """One embedding for source and target (model.tie_embeddings=all) needs text read into one vocabulary (a
    generated task has one), even where two vocabularies would happen to have the same size."""
    from playground.data.synthetic import TASKS  # here, not at the top: `--help` does not wait for torch

    if model_cfg.tie_embeddings == "all" and dataset_cfg.name not in TASKS and not dataset_cfg.shared_vocab:
        raise UserError("model.tie_embeddings=all gives source and target tokens one embedding, so it needs one "
                        "vocabulary for both: add dataset.shared_vocab=true (or use model.tie_embeddings=decoder)")


def check_lengths(model_cfg, dataset_cfg, checkpoint=None) -> None:
    """The longest sequences the data may hold must fit the positions the model has (model.max_len): checked
    before any data is read or downloaded, rather than as a shape error part-way through training or evaluation.
    The decoder reads BOS and the target, one position more than the target's length. checkpoint: the path of
    the trained model being evaluated, whose max_len cannot change."""
    from playground.data.synthetic import TASKS  # here, not at the top: `--help` does not wait for torch

    if dataset_cfg.name in TASKS:
        needs = {"dataset.max_len": (dataset_cfg.max_len, dataset_cfg.max_len + 1)}  # targets as long as sources
    else:
        needs = {"dataset.max_src_len": (dataset_cfg.max_src_len, dataset_cfg.max_src_len),
                 "dataset.max_tgt_len": (dataset_cfg.max_tgt_len, dataset_cfg.max_tgt_len + 1)}
    for key, (value, positions) in needs.items():
        if positions > model_cfg.max_len and checkpoint is not None:
            raise UserError(f"{key}={value} needs {positions} positions but the model of ckpt_path={checkpoint} has "
                            f"model.max_len={model_cfg.max_len} (lower {key})")
        if positions > model_cfg.max_len:
            raise UserError(f"{key}={value} needs {positions} positions but model.max_len={model_cfg.max_len} "
                            f"(raise model.max_len or lower {key})")


def check_not_a_sweep(hydra_cfg) -> None:
    """A preset that defines a sweep (hydra.sweeper.params: experiment=heads_sweep, hparams_search=optuna) used
    without -m would run one job of the defaults, quietly: refused, since a single run cannot start the sweep."""
    from hydra.types import RunMode

    params = hydra_cfg.sweeper.get("params") or {}
    if params and hydra_cfg.mode != RunMode.MULTIRUN:
        choices = hydra_cfg.runtime.choices
        preset = next((f"{group}={choices[group]}" for group in ("experiment", "hparams_search")
                       if choices.get(group) not in (None, "null")), "this config")
        swept = ", ".join(f"{key}={value}" for key, value in params.items())
        raise UserError(f"{preset} is a sweep ({swept}): run it with -m, as in python transformer_playground.py -m "
                        f"{preset}")


def check_overrides(args) -> None:
    """The command line's overrides composed as Hydra will compose them, before Hydra does, so that a misspelt key,
    a value of the wrong type or a group option that does not exist is one UserError line naming it, not Hydra's
    report of several lines. A sweep (-m) is composed for each combination of its lists' values (the first
    MAX_SWEEP_CHECKS); a training sweep whose values all come from the command line's lists also gets the checks
    run_train makes before it reads any data, so that a bad value stops it before its first job rather than in the
    middle; a mistake that does not name a key swept by range(), interval() or the sweeper's params (Optuna's, a
    preset's) stops it too. Hydra's own flags, and groups swept by glob(), are left to Hydra and to each job."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    sweep = any(a in ("-m", "--multirun") for a in args)
    if sweep and "WORLD_SIZE" in os.environ:  # each process would run its own sweep: the second job's DDP hangs
        raise UserError("a sweep (-m) does not run under torchrun: start torchrun once for each job, with its "
                        "overrides (or sweep without torchrun)")
    given = [a for a in args if a not in ("-m", "--multirun")]
    if any(a.startswith("-") for a in given):  # --help, --cfg job, -cp ...: Hydra's flags, Hydra's business
        return
    if any(not a.strip() for a in given):  # "$EXTRA" with EXTRA unset: Hydra's parser says only "mismatched <EOF>"
        raise UserError("an empty word on the command line (a quoted shell variable that is not set?): every word "
                        "after the command must be key=value; remove it")
    try:
        parsed = OverridesParser.create().parse_overrides(given)
    except HydraException as e:
        _refuse_unquoted_value(given)
        lines = str(e).splitlines()
        raise UserError(f"{lines[0]}: {lines[1] if len(lines) > 1 else 'not key=value'} (write key=value)") from None
    choices = []  # for each override, the texts to compose with
    direction = None  # hydra.sweeper.direction as the command line gives it (hydra.* is not composed here)
    counts = {}  # hydra.sweeper.n_trials and n_jobs as the command line gives them: {key: (text, value)}
    intervals = []  # interval() sweeps: a range of real numbers, which only a search (Optuna) can draw from
    swept = set()  # keys whose values the sweeper chooses outside these combinations (range(), Optuna's params)
    unknown = False  # values chosen elsewhere that cannot be named key by key (a group's glob(), the sweeper's node)
    sections = config_sections()
    for override, text in zip(parsed, given):
        key = override.key_or_group
        if key == "hydra.searchpath":  # where the user's own config files are: composing needs it
            choices.append([text])
            continue
        if key == "hydra.sweeper.direction":
            direction = override.value()
        if key in ("hydra.sweeper.n_trials", "hydra.sweeper.n_jobs"):
            counts[key] = (text, override.value())
        if key == "hydra/launcher" and "slurm" in str(override.value()) and sweep:
            _check_slurm_here(text)
        if sweep and key in ("hydra/launcher", "hydra/sweeper"):  # composed too: a misspelt one is named in one line
            choices.append([text])
        if key.startswith("hydra.sweeper.params."):
            name = key.removeprefix("hydra.sweeper.params.")
            if override.is_sweep_override() or "." in name:  # Hydra's "not supported" or "not in struct", in lines
                value = text.split("=", 1)[1].strip()
                value = value[1:-1] if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else value
                raise UserError(f"{text}: Hydra cannot set a search space under hydra.sweeper.params from the command "
                                f"line; give it to the key itself, as in -m hparams_search=optuna '{name}={value}'")
            swept.add(name)
        unknown |= key in ("hydra", "hydra.sweeper", "hydra.sweeper.params") or override.is_delete()
        if key.startswith("hydra") or override.is_delete():
            continue
        if override.is_add() and "." in key and key.split(".")[0] in sections:
            section, name = key.split(".", 1)
            known = "." not in name and name in {f.name for f in fields(sections[section])}
            raise UserError(f"{text}: {key} exists: write {text.lstrip('+')} (a + adds a new key)" if known else
                            f"{text}: {section} has no key {name} to add: the playground would not read it, and a "
                            f"checkpoint holding it could not be loaded back")
        if isinstance(override.value(), IntervalSweep):
            intervals.append((text, key))
        if not override.is_sweep_override():
            choices.append([text])
        elif isinstance(override.value(), ChoiceSweep) and override.value().list:
            prefix = text.split("=", 1)[0]
            choices.append([f"{prefix}={value}" for value in override.sweep_string_iterator()])
        else:
            swept.add(key)
    for combination in itertools.islice(itertools.product(*choices), MAX_SWEEP_CHECKS):
        cfg = compose_checked(list(combination), with_hydra=sweep)
        if not sweep and not any("${hydra:" in text for text in combination):
            try:  # an interpolation that names no key, now rather than as several lines when the run first reads it
                OmegaConf.to_container(cfg, resolve=True)
            except OmegaConfBaseException as e:
                raise UserError(str(e).splitlines()[0]) from None
        if sweep:
            _check_sweep_direction(cfg, direction)
            _check_sweeper_counts(cfg, counts)
            if intervals and str(OmegaConf.select(cfg, "hydra.sweeper._target_")).endswith(".BasicSweeper"):
                text, key = intervals[0]
                raise UserError(f"{text}: interval() is a range for a search to draw from, and -m alone runs a list "
                                f"of values: add hparams_search=optuna, or list the values ({key}=A,B,C)")
        keys = swept | set(OmegaConf.select(cfg, "hydra.sweeper.params") or {})  # a preset's search space too
        if not sweep or unknown or cfg.mode != "train" or any("." not in key for key in keys):
            continue  # a single run makes these checks itself, first thing; a swept group changes any key
        if any("${" in text for text in combination):
            continue  # an interpolation (${hydra:job.num}, say) is resolved in the job, where Hydra's own node is set
        try:
            check_run_config(cfg)
        except UserError as e:
            message = str(e).splitlines()[0]
            if any(key in message for key in keys):
                continue  # about a value the sweeper chooses: another value may pass, and each job checks its own
            shown = [c for c in combination if not c.startswith("hydra")]
            where = f"the sweep's job with {' '.join(shown)}" if shown else "every job of the sweep"
            raise UserError(f"{message} (in {where})") from None
        except OmegaConfBaseException as e:  # a mandatory value left ???, an interpolation that does not resolve
            raise UserError(str(e).splitlines()[0]) from None


def check_sweeper_direction(direction, monitor_mode: str) -> None:
    """A sweeper that optimises the returned monitor (Optuna's hydra.sweeper.direction) must look for it in the
    monitor's direction (trainer.monitor_mode, as resolved)."""
    wanted = {"max": "maximize", "min": "minimize"}[monitor_mode]
    if isinstance(direction, str) and direction != wanted:
        raise UserError(f"hydra.sweeper.direction={direction} but trainer.monitor_mode={monitor_mode}: the sweeper would "
                        f"look for the worst runs (set hydra.sweeper.direction={wanted})")


def _check_sweep_direction(cfg, direction=None) -> None:
    """check_sweeper_direction for a sweep's composed config (with its hydra node; `direction`: the command line's
    hydra.sweeper.direction, if given), before its first job: a job refused for it would leave its folder behind.
    Skipped where the sweeper itself chooses the monitor."""
    from playground.data.synthetic import TASKS  # here, not at the top: `--help` does not wait for torch
    from playground.train import resolve_monitor

    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    if cfg.mode != "train" or any(key.startswith("trainer.monitor") for key in params):
        return
    _, mode = resolve_monitor(cfg.trainer.monitor, cfg.trainer.monitor_mode, cfg.dataset.name not in TASKS)
    check_sweeper_direction(direction or OmegaConf.select(cfg, "hydra.sweeper.direction"), mode)


def _check_sweeper_counts(cfg, given: dict) -> None:
    """Optuna's hydra.sweeper.n_trials and n_jobs (`given`: the command line's, {key: (text, value)}) must be whole
    numbers of at least 1: with 0 trials the study ends in Optuna's "No trials are completed yet" traceback, with 0
    at a time in a ZeroDivisionError, and a word in Hydra's report of several lines."""
    if not str(OmegaConf.select(cfg, "hydra.sweeper._target_")).endswith(".OptunaSweeper"):
        return
    for key in ("hydra.sweeper.n_trials", "hydra.sweeper.n_jobs"):
        text, value = given.get(key, (f"{key}={OmegaConf.select(cfg, key)}", OmegaConf.select(cfg, key)))
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            what = "trials in all" if key.endswith("n_trials") else "trials asked for at a time"
            raise UserError(f"{text}: the number of {what} must be a whole number, 1 or more")


def _check_slurm_here(text: str) -> None:
    """A sweep sent to SLURM from a machine without SLURM's sbatch: one line, before Hydra makes the sweep's folder
    (submitit's own error is a traceback, after it)."""
    import shutil

    missing = [command for command in ("sbatch", "srun") if shutil.which(command) is None]
    if missing:
        raise UserError(f"{text}: this machine has no {missing[0]} (one of SLURM's commands): run the sweep on the "
                        f"cluster, from a machine where sbatch and srun work, or leave out {text.split('=')[0]}= to "
                        f"run the jobs here one after another")


def _refuse_unquoted_value(given) -> None:
    """The override Hydra cannot parse because its value holds "=" or "," (a sweep job's folder in a path, say),
    refused with the quoting that reads it as written."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from playground.rundir import pasted_override  # here: rundir imports this module

    parser = OverridesParser.create()
    for text in given:
        key, _, value = text.partition("=")
        if not any(mark in value for mark in "=,"):
            continue
        try:
            parser.parse_override(text)
        except HydraException:
            raise UserError(f"{text}: Hydra reads \"=\" and \",\" in a value as another override and a list; quote the "
                            f"value: {pasted_override(key, value)}") from None


MAX_SWEEP_CHECKS = 32  # sweep combinations composed and checked before the first job


def check_run_config(cfg):
    """The checks a training run makes of its config before anything is read or downloaded; returns cfg.trainer as
    its dataclass (the loop never reads the config tree)."""
    check_choices(cfg)
    given = [key for key in ("text", "input_file", "reference_file", "output_file") if cfg.get(key) is not None]
    if given:
        readers = {"text": "mode=translate", "reference_file": "mode=score"}.get(given[0],
                                                                                "mode=translate or mode=score")
        raise UserError(f"{given[0]}={cfg[given[0]]}: mode=train does not read it (it is for {readers}): remove it")
    from playground.setup import check_optimizer, check_scheduler, check_unused_settings  # not at the top: --help

    t = OmegaConf.to_object(cfg.trainer)
    check_trainer(t)
    check_optimizer(cfg.optimizer, resuming=bool(cfg.ckpt_path) or t.auto_resume)
    check_scheduler(cfg.scheduler)
    check_unused_settings(cfg.optimizer, cfg.scheduler)
    check_decode(cfg.decode, t)
    check_training_decode(cfg.decode)
    check_model(cfg.model)
    check_one_training_source(cfg.dataset)
    check_tied_vocabulary(cfg.model, cfg.dataset)
    check_lengths(cfg.model, cfg.dataset)
    return t


def compose_checked(overrides, with_hydra: bool = False):
    """compose_config(overrides), with what Hydra would report in several lines as one UserError line; with_hydra:
    with the hydra node too (a sweeper's params)."""
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose_config(overrides, with_hydra)
        _check_dataset_name(overrides, cfg)
        _check_dataset_preset_files(overrides, cfg)
        return cfg
    except MissingConfigException as e:
        group, _, option = str(getattr(e, "missing_cfg_file", "") or "").rpartition("/")  # hydra/launcher/jobl too
        options = getattr(e, "options", None)
        if group and options:
            asked = "" if f"{group}={option}" in overrides else next(  # not typed: a preset's defaults list asks it
                (f" (asked for by {_shown_path(str(f))})" for f in _chosen_files(overrides)
                 if f"/{group}: {option}" in f.read_text(errors="replace")), "")
            raise UserError(f"{group}={option} is not one of: {', '.join(options)} (configs/{group}/){asked}") from None
        raise UserError(str(e).splitlines()[0]) from None
    except (HydraException, OmegaConfBaseException) as e:
        # the reason is Hydra's cause for an override, and the exception it was handling for a YAML file's value
        cause = next((c for c in (e.__cause__, e.__context__) if isinstance(c, OmegaConfBaseException)), None)
        first = str(e).splitlines()[0].rstrip(".").replace(" raised while composing config", "").rstrip(":")
        reason = str(cause).splitlines()[0] if cause else ""
        key = getattr(cause, "full_key", None) or ""
        hint = _close_key(key) if "not in" in reason else ""
        for group in ("experiment", "hparams_search"):  # presets written without their first line
            if f"Key '{group}' not in" in reason:
                hint += (f" (a file of configs/{group}/ starts with the line `# @package _global_`, so that its keys "
                         f"are the run's own: model.heads, not {group}.model.heads)")
        where = f"{key}: " if key and key not in first + reason else ""
        raise UserError(f"{first}: {where}{reason}{hint}" if reason else first) from None
    except yaml.YAMLError as e:  # a config file that is not YAML: its path and line
        mark = getattr(e, "problem_mark", None)
        where = f"{_shown_path(mark.name)} line {mark.line + 1}" if mark else "a config file"
        what = ": ".join(str(part) for part in (getattr(e, "context", None), getattr(e, "problem", None)) if part)
        raise UserError(f"{where}: not valid YAML: {what or e}") from None
    except UnicodeDecodeError as e:  # a config file saved in another encoding (Latin-1, UTF-16): which one
        unreadable = next((f for f in _chosen_files(overrides) if not _is_utf8(f)), None)
        where = _shown_path(str(unreadable)) if unreadable else "a config file the overrides choose"
        raise UserError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8") from None
    except ValueError as e:  # Hydra's own, for an override it parsed but cannot apply ("=3")
        raise UserError(f"the overrides {' '.join(overrides)} cannot be applied: {e}") from None


def _check_dataset_name(overrides, cfg) -> None:
    """dataset.name=X on the command line renames the chosen preset but keeps its other settings: dataset.name=
    text_pairs would read the files with the reverse task's vocab_size=16. Refused unless it names the preset's own
    dataset: the dataset is chosen with dataset=X."""
    given = [text for text in overrides if text.split("=", 1)[0].lstrip("+") == "dataset.name"]
    if not given or "${" in given[-1]:
        return
    preset = compose_config([text for text in overrides if text not in given], with_hydra=True)
    choice, own = preset.hydra.runtime.choices.get("dataset"), preset.dataset.name
    if cfg.dataset.name != own:
        raise UserError(f"{given[-1]} renames dataset={choice} but keeps its other settings (its vocab_size, lengths, "
                        f"files): choose the dataset with dataset={cfg.dataset.name}")


def _check_dataset_preset_files(overrides, cfg) -> None:
    """A dataset YAML file that names data files but no `name: text_pairs` is the schema's generated reverse task,
    which reads no file: refused, naming the file. (Files given on the command line to a generated task are only
    warned about, as a sweep over every preset gives them to all.)"""
    from playground.data.synthetic import TASKS  # here, not at the top: `--help` does not wait for torch

    if cfg.dataset.name not in TASKS or not any(cfg.dataset.get(key) for key in DATA_FILE_KEYS):
        return
    preset = compose_config([text for text in overrides if not text.lstrip("+~").startswith("dataset.")],
                            with_hydra=True)
    given = [f"{key}: {preset.dataset[key]}" for key in DATA_FILE_KEYS if preset.dataset.get(key)]
    if preset.dataset.name in TASKS and given:
        choice = preset.hydra.runtime.choices.get("dataset")
        file = next((_shown_path(str(f)) for f in _chosen_files(overrides) if f.parent.name == "dataset"),
                    f"configs/dataset/{choice}.yaml")
        raise UserError(f"dataset={choice} gives {', '.join(given)} to {preset.dataset.name}, a generated task that "
                        f"reads no file (the name a dataset file that sets none gets): add `name: text_pairs` to {file}")


def _chosen_files(overrides):
    """The config files that `group=option` overrides choose, in configs/ and in the folders of hydra.searchpath."""
    from pathlib import Path

    folders = [Path(__file__).resolve().parents[1] / "configs"]
    for text in overrides:
        if text.startswith("hydra.searchpath="):
            folders += [Path(p.strip(" '\"").removeprefix("file://"))
                        for p in text.split("=", 1)[1].strip("[]").split(",") if p.strip()]
    for text in overrides:
        group, _, option = text.partition("=")
        if option and "." not in group and not group.startswith(("hydra", "+", "~")):
            yield from (f for f in (folder / group / f"{option}.yaml" for folder in folders) if f.is_file())


def _is_utf8(path) -> bool:
    try:
        path.read_bytes().decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _shown_path(path: str) -> str:
    """A config file's path as the user knows it: relative to the working folder where it lies below it."""
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    except ValueError:  # another drive
        return path


def _close_key(full_key: str) -> str:
    """' (did you mean model.heads?)' for a misspelt model.hedas: the nearest key of the same section."""
    import difflib

    *path, name = full_key.split(".")
    node = Config if not path else config_sections().get(path[0]) if len(path) == 1 else None
    close = difflib.get_close_matches(name, [f.name for f in fields(node)], n=1) if node else []
    return f" (did you mean {'.'.join([*path, close[0]])}?)" if close else ""
