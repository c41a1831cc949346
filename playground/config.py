"""The config schema: one dataclass per config group, registered in Hydra's ConfigStore.

Hydra merges configs/config.yaml and the chosen group files onto these dataclasses, so a value of the
wrong type or a key that does not exist is refused before anything runs. Values that a type cannot
check (heads dividing d_model, a device this machine has) are checked where they are used, and raise
playground.errors.UserError naming the key.
"""

import hashlib
import os
from dataclasses import MISSING, dataclass, field, fields
from typing import List, Optional

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from .errors import UserError


@dataclass
class ModelConfig:
    d_model: int = 128  # width of every sublayer's input and output (d_model)
    heads: int = 4  # attention heads (h); must divide d_model
    enc_layers: int = 2  # encoder layers (N)
    dec_layers: int = 2  # decoder layers (N)
    d_ff: int = 512  # inner width of the position-wise feed-forward network (d_ff)
    dropout: float = 0.0  # P_drop: on embeddings, attention weights, and each sublayer's output
    norm_position: str = "post"  # post (paper: norm after the residual add) | pre
    norm: str = "layernorm"  # layernorm (paper) | rmsnorm
    final_norm: bool = False  # one more norm after the last layer of each stack (nn.Transformer has it)
    positional: str = "sinusoidal"  # sinusoidal (paper) | learned | rotary | none
    activation: str = "relu"  # feed-forward activation: relu (paper) | gelu | swiglu
    attention: Optional[str] = None  # retired: how attention is computed is trainer.kernels now (refused if set)
    tie_embeddings: str = "decoder"  # none | decoder (output layer shares the target embedding) | all (source too)
    max_len: int = 512  # the longest sequence the positional encodings cover
    key_dim: Optional[int] = None  # d_k, each head's query and key size (Table 3 row B); null: d_model/heads
    ablate: List[str] = field(default_factory=list)  # pieces of the paper to remove: causal_mask, attention_scale,
    # padding_mask, residual, layer_norm, embedding_scale, positional (docs/ablations.md shows what each does)


@dataclass
class DatasetConfig:
    name: str = "reverse"  # copy | reverse | sort (synthetic) | text_pairs (local files) | opus_books (the hub)
    vocab_size: int = 16  # synthetic: number of symbols; text: the largest vocabulary a tokenizer may learn
    seed: int = 0  # fixes the splits, independently of the training seed
    # synthetic tasks
    min_len: int = 1  # shortest source sequence
    max_len: int = 10  # longest source sequence
    num_train: int = 20000  # distinct training examples
    num_valid: int = 500  # distinct validation examples
    num_test: int = 1000  # distinct test examples
    # parallel text: files (text_pairs) or a Hugging Face dataset (opus_books)
    train_file: Optional[str] = None  # TSV, JSONL, or a Moses prefix (data/train for data/train.en + data/train.it)
    valid_file: Optional[str] = None  # optional: otherwise valid_fraction of the training file
    test_file: Optional[str] = None  # optional: otherwise test_fraction of the training file
    format: str = "auto"  # auto (from the file name) | tsv | jsonl | moses
    src_lang: str = "en"  # JSONL "translation" keys and Moses file suffixes
    tgt_lang: str = "it"
    hub_name: Optional[str] = None  # a Hugging Face dataset with a translation column, or a save_to_disk folder
    hub_config: Optional[str] = None  # its configuration (default: SRC_LANG-TGT_LANG, e.g. en-it)
    valid_fraction: float = 0.05  # held out of the training pairs when there is no valid file
    test_fraction: float = 0.05  # held out of the training pairs when there is no test file
    tokenizer: str = "bpe"  # char | word | bpe, trained on the training split only
    shared_vocab: bool = False  # one tokenizer for both sides (needed by model.tie_embeddings=all)
    min_frequency: int = 2  # a token seen fewer times in training becomes <unk> (char, word) or is not merged (bpe)
    max_src_len: int = 128  # tokens; longer pairs are handled by too_long
    max_tgt_len: int = 128
    too_long: str = "filter"  # filter (drop the pair) | truncate (cut to the maximum)
    cache: bool = True  # text_pairs: tokenise once into a memory-mapped token cache that later runs reuse
    cache_dir: Optional[str] = None  # where the token cache goes (null: .playground-cache beside the training file)


@dataclass
class OptimizerConfig:
    name: str = "adam"  # adam | adamw | sgd
    lr: Optional[float] = None  # peak learning rate (the schedule scales it); null: 2e-3 * sqrt(128 / model.d_model)
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])  # Adam's beta1, beta2 (Section 5.3)
    eps: float = 1e-9  # Adam's epsilon (Section 5.3)
    weight_decay: float = 0.0  # L2 penalty (decoupled for adamw)
    momentum: float = 0.9  # sgd only


@dataclass
class SchedulerConfig:
    name: str = "cosine"  # noam (paper: linear warmup, then 1/sqrt(step)) | cosine | constant
    warmup_steps: Optional[int] = None  # steps of linear warmup to the peak lr (0: none); null: max_steps / 7.5, at most 4000
    min_lr_ratio: float = 0.0  # cosine only: the final learning rate as a fraction of the peak


@dataclass
class TrainerConfig:
    max_steps: int = 500  # optimiser steps
    batch_size: int = 64  # sentence pairs per step (per process under torchrun)
    max_tokens: int = 0  # instead of batch_size: length-bucketed batches of at most this many padded tokens
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | mps
    precision: str = "auto"  # auto (bf16 where the CPU/GPU computes it natively, else fp32) | fp32 | bf16 | fp16 (CUDA)
    label_smoothing: float = 0.1  # epsilon_ls (Section 5.4)
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off)
    log_every: int = 50  # steps between train/* scalars (and the only host syncs of the loop)
    accumulate: int = 1  # batches whose gradients add up to one optimiser step (the loss is over all their tokens)
    eval_every: int = 100  # steps between evaluations on the validation split (each saves last.pt)
    monitor: Optional[str] = None  # the valid/* metric that picks best.pt; null: valid/bleu (text), valid/exact_match
    monitor_mode: Optional[str] = None  # max | min; null: from the metric (min for loss, nll, ppl, cer, wer)
    patience: int = 0  # stop after this many evaluations without a better monitor value (0 = off)
    keep_last: int = 0  # keep the last K evaluations' checkpoints (checkpoints/step_N.pt) for mode=average
    checkpoint_every: int = 0  # also save last.pt every this many steps (0 = only at evaluations)
    on_nonfinite: str = "stop"  # NaN/inf: stop (naming step and lr) | skip (the update; gradients too; syncs each step)
    kernels: str = "reference"  # reference (playground/model/ as written) | fast (playground/kernels/ drop-ins)
    compile: bool = False  # torch.compile the model for training (inductor); falls back to eager with a message
    progress: str = "auto"  # auto (a bar on a terminal, else a log line every log_every steps) | bar | log | off
    eval_batch_size: int = 500  # sentence pairs per evaluation batch (how they are decoded: the decode group)
    num_samples: int = 4  # source / reference / prediction triples shown at each evaluation
    auto_resume: bool = False  # resume from this run directory's own checkpoints/last.pt if it has one (a requeued job)
    resume_override: bool = False  # resume (ckpt_path) even with another model, data or recipe; the log lists the changes
    # retired: the decoding settings moved to the decode group (decode.beam_size, ...); refused if set
    beam_size: Optional[int] = None
    length_penalty: Optional[float] = None
    max_len_a: Optional[float] = None
    max_len_b: Optional[int] = None


@dataclass
class DecodeConfig:
    beam_size: int = 1  # 1: greedy decoding (or sampling); more: beam search (Section 6.1 used 4)
    length_penalty: float = 0.6  # beam search ranks by log-probability / ((5 + length) / 6)^alpha (Wu et al. 2016)
    max_len_a: float = 1.2  # decode at most a * source_length + b tokens
    max_len_b: int = 10
    nbest: int = 1  # translate: print this many of the beam's hypotheses per input, with scores (at most beam_size)
    sampling: bool = False  # draw each token from the model's distribution instead of taking the most likely
    temperature: float = 1.0  # sampling: divide the logits by this (< 1 sharper, > 1 flatter)
    top_k: int = 0  # sampling: draw from the k most likely tokens only (0 = all)
    top_p: float = 1.0  # sampling: draw from the fewest tokens whose probabilities add up to top_p (1 = all)
    no_repeat_ngram_size: int = 0  # never output the same n-gram twice (0 = off)
    batch_size: int = 64  # translate and score: sentences decoded together, grouped by length


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    mode: str = "train"  # train | eval | translate | score | average | export
    seed: int = 1234  # model initialisation, dropout and batch order
    ckpt_path: Optional[str] = None  # a checkpoint or mode=export folder (mode=average: a checkpoints folder)
    text: Optional[str] = None  # translate this (otherwise input_file, or one input a line on standard input)
    input_file: Optional[str] = None  # translate: one source a line; score: sources (a TSV of pairs without reference_file)
    reference_file: Optional[str] = None  # score: the reference translation of each input_file line
    output_file: Optional[str] = None  # translate and score write here instead of standard output
    overwrite: bool = False  # let output_file replace a file that exists


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


MODES = ("train", "eval", "translate", "score", "average", "export")


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


def check_choices(cfg) -> None:
    """Refuse a misspelt option (optimizer.name=adamx) in one line listing the right ones: at the start of every
    mode, before any data is read or downloaded."""
    for key, options in choice_options().items():
        group, _, name = key.rpartition(".")
        value = (cfg[group] if group else cfg).get(name)
        if value not in options:
            listed = ", ".join("null" if option is None else str(option) for option in options)
            raise UserError(f"{key}={value} is not one of: {listed}")


RETIRED_TRAINER_KEYS = ("beam_size", "length_penalty", "max_len_a", "max_len_b")  # now in the decode group


def check_decode(d, trainer_cfg=None) -> None:
    """The decode keys a type cannot check, each refused in one line; and the trainer's retired decoding keys,
    refused with the name they have now."""
    for key in RETIRED_TRAINER_KEYS:
        if trainer_cfg is not None and getattr(trainer_cfg, key, None) is not None:
            raise UserError(f"trainer.{key} is now decode.{key}: write decode.{key}={getattr(trainer_cfg, key)}")
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


def check_decode_vocabulary(d, tgt_vocab_size: int) -> None:
    """A beam wider than the tokens that can start an output (the vocabulary less PAD and BOS) would fill with
    impossible hypotheses."""
    if d.beam_size > tgt_vocab_size - 2:
        raise UserError(f"decode.beam_size={d.beam_size} is more than the {tgt_vocab_size - 2} tokens an output can "
                        f"start with (the target vocabulary less <pad> and <s>)")


def upgrade_saved_config(config: dict) -> dict:
    """A checkpoint's config as this version names it: model.attention (before trainer.kernels) is dropped, and
    trainer.beam_size and friends (before the decode group) move to decode.*."""
    config = {**config}
    if isinstance(config.get("model"), dict) and "attention" in config["model"]:
        config["model"] = {k: v for k, v in config["model"].items() if k != "attention"}
    trainer = config.get("trainer")
    if isinstance(trainer, dict) and any(key in trainer for key in RETIRED_TRAINER_KEYS):
        moved = {key: trainer[key] for key in RETIRED_TRAINER_KEYS if trainer.get(key) is not None}
        config["trainer"] = {k: v for k, v in trainer.items() if k not in RETIRED_TRAINER_KEYS}
        config["decode"] = {**moved, **config.get("decode", {})}
    return config


def unread_dataset_files(dataset_cfg) -> str | None:
    """The line a run logs where data files are given to a generated task, which reads none: forgetting
    dataset=text_pairs would otherwise train on the task without a word. (A warning, not a refusal: a sweep over
    every preset gives one command line's files to the text presets and the generated ones alike.)"""
    from playground.data.synthetic import TASKS  # here, not at the top: `--help` does not wait for torch

    given = [f"dataset.{key}={dataset_cfg[key]}" for key in ("train_file", "valid_file", "test_file", "hub_name")
             if dataset_cfg.name in TASKS and dataset_cfg.get(key)]
    if given:
        return (f"{', '.join(given)} not read: dataset={dataset_cfg.name} generates its examples (to train on files: "
                f"dataset=text_pairs)")
    return None


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


def job_dirname(overrides: str, limit: int = 120) -> str:
    """A sweep job's folder name from its overrides: no '/', and at most `limit` characters.

    File systems refuse names over 255 bytes, which a sweep with many overrides reaches; a long name
    keeps its start and ends in a short hash of the whole, so two jobs never share a folder.
    """
    name = overrides.replace("/", "_")
    if len(name) <= limit:
        return name
    return name[: limit - 9] + "~" + hashlib.sha1(name.encode()).hexdigest()[:8]


def compose_config(overrides=(), with_hydra: bool = False):
    """configs/config.yaml composed with command-line style overrides, as the command would, from Python (with_hydra:
    with Hydra's own node, hydra.*, as well)."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=with_hydra)


def check_overrides(args) -> None:
    """The command line's overrides composed as Hydra will compose them, before Hydra does, so that a misspelt key,
    a value of the wrong type or a group option that does not exist is one UserError line naming it, not Hydra's
    report of several lines. A sweep (-m) is composed for each combination of its lists' values (the first
    MAX_SWEEP_CHECKS); a training sweep whose values all come from the command line's lists also gets the checks
    run_train makes before it reads any data, so that a bad value stops it before its first job rather than in the
    middle. Hydra's own flags, and keys swept by range(), interval(), glob() or the sweeper's params (Optuna's, a
    preset's), are left to Hydra and to each job."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    sweep = any(a in ("-m", "--multirun") for a in args)
    given = [a for a in args if a not in ("-m", "--multirun")]
    if any(a.startswith("-") for a in given):  # --help, --cfg job, -cp ...: Hydra's flags, Hydra's business
        return
    try:
        parsed = OverridesParser.create().parse_overrides(given)
    except HydraException as e:
        lines = str(e).splitlines()
        raise UserError(f"{lines[0]}: {lines[1] if len(lines) > 1 else 'not key=value'} (write key=value)") from None
    choices = []  # for each override, the texts to compose with
    swept_elsewhere = False  # a value the sweeper chooses that these combinations do not hold
    sections = _sections()
    for override, text in zip(parsed, given):
        key = override.key_or_group
        if key == "hydra.searchpath":  # where the user's own config files are: composing needs it
            choices.append([text])
            continue
        if key.startswith("hydra") or override.is_delete():
            swept_elsewhere |= key.startswith("hydra.sweeper") or key == "hydra"
            continue
        if override.is_add() and "." in key and key.split(".")[0] in sections:
            section, name = key.split(".", 1)
            known = "." not in name and name in {f.name for f in fields(sections[section])}
            raise UserError(f"{text}: {key} exists: write {text.lstrip('+')} (a + adds a new key)" if known else
                            f"{text}: {section} has no key {name} to add: the playground would not read it, and a "
                            f"checkpoint holding it could not be loaded back")
        if not override.is_sweep_override():
            choices.append([text])
        elif isinstance(override.value(), ChoiceSweep) and override.value().list:
            prefix = text.split("=", 1)[0]
            choices.append([f"{prefix}={value}" for value in override.sweep_string_iterator()])
        else:
            swept_elsewhere = True
    for combination in itertools.islice(itertools.product(*choices), MAX_SWEEP_CHECKS):
        cfg = compose_checked(list(combination), with_hydra=sweep)
        if not sweep and not any("${hydra:" in text for text in combination):
            try:  # an interpolation that names no key, now rather than as several lines when the run first reads it
                OmegaConf.to_container(cfg, resolve=True)
            except OmegaConfBaseException as e:
                raise UserError(str(e).splitlines()[0]) from None
        if not sweep or swept_elsewhere or cfg.mode != "train" or OmegaConf.select(cfg, "hydra.sweeper.params"):
            continue  # a single run makes these checks itself, first thing; other values than these are swept
        if any("${" in text for text in combination):
            continue  # an interpolation (${hydra:job.num}, say) is resolved in the job, where Hydra's own node is set
        try:
            check_run_config(cfg)
        except UserError as e:
            shown = [c for c in combination if not c.startswith("hydra.")]
            raise UserError(f"{str(e).splitlines()[0]} (in the sweep's job with {' '.join(shown)})") from None
        except OmegaConfBaseException as e:  # a mandatory value left ???, an interpolation that does not resolve
            raise UserError(str(e).splitlines()[0]) from None


MAX_SWEEP_CHECKS = 32  # sweep combinations composed and checked before the first job


def check_run_config(cfg):
    """The checks a training run makes of its config before anything is read or downloaded; returns cfg.trainer as
    its dataclass (the loop never reads the config tree)."""
    check_choices(cfg)
    given = [key for key in ("text", "input_file", "reference_file", "output_file") if cfg.get(key) is not None]
    if given:
        raise UserError(f"{given[0]}={cfg[given[0]]}: mode=train does not read it (it is for mode=translate or "
                        f"mode=score): remove it")
    from playground.setup import check_optimizer, check_scheduler, check_unused_settings  # not at the top: --help

    t = OmegaConf.to_object(cfg.trainer)
    check_trainer(t)
    check_optimizer(cfg.optimizer)
    check_scheduler(cfg.scheduler)
    check_unused_settings(cfg.optimizer, cfg.scheduler)
    check_decode(cfg.decode, t)
    check_model(cfg.model)
    check_tied_vocabulary(cfg.model, cfg.dataset)
    check_lengths(cfg.model, cfg.dataset)
    return t


def compose_checked(overrides, with_hydra: bool = False):
    """compose_config(overrides), with what Hydra would report in several lines as one UserError line; with_hydra:
    with the hydra node too (a sweeper's params)."""
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose_config(overrides, with_hydra)
    except MissingConfigException as e:
        group, _, option = str(getattr(e, "missing_cfg_file", "") or "").partition("/")
        options = getattr(e, "options", None)
        if group and options:
            raise UserError(f"{group}={option} is not one of: {', '.join(options)} (configs/{group}/)") from None
        raise UserError(str(e).splitlines()[0]) from None
    except (HydraException, OmegaConfBaseException) as e:
        # the reason is Hydra's cause for an override, and the exception it was handling for a YAML file's value
        cause = next((c for c in (e.__cause__, e.__context__) if isinstance(c, OmegaConfBaseException)), None)
        first = str(e).splitlines()[0].rstrip(".").replace(" raised while composing config", "").rstrip(":")
        reason = str(cause).splitlines()[0] if cause else ""
        key = getattr(cause, "full_key", None) or ""
        hint = _close_key(key) if "not in" in reason else ""
        where = f"{key}: " if key and key not in first + reason else ""
        raise UserError(f"{first}: {where}{reason}{hint}" if reason else first) from None
    except yaml.YAMLError as e:  # a config file that is not YAML: its path and line
        mark = getattr(e, "problem_mark", None)
        where = f"{_shown_path(mark.name)} line {mark.line + 1}" if mark else "a config file"
        what = ": ".join(str(part) for part in (getattr(e, "context", None), getattr(e, "problem", None)) if part)
        raise UserError(f"{where}: not valid YAML: {what or e}") from None
    except ValueError as e:  # Hydra's own, for an override it parsed but cannot apply ("=3")
        raise UserError(f"the overrides {' '.join(overrides)} cannot be applied: {e}") from None


def _shown_path(path: str) -> str:
    """A config file's path as the user knows it: relative to the working folder where it lies below it."""
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    except ValueError:  # another drive
        return path


def _sections() -> dict:
    """The schema's sections by name: {"model": ModelConfig, ...}."""
    return {f.name: f.default_factory for f in fields(Config) if f.default_factory is not MISSING}


def _close_key(full_key: str) -> str:
    """' (did you mean model.heads?)' for a misspelt model.hedas: the nearest key of the same section."""
    import difflib

    *path, name = full_key.split(".")
    node = Config if not path else _sections().get(path[0]) if len(path) == 1 else None
    close = difflib.get_close_matches(name, [f.name for f in fields(node)], n=1) if node else []
    return f" (did you mean {'.'.join([*path, close[0]])}?)" if close else ""


def register_configs() -> None:
    """Make the schema known to Hydra as `config_schema`, the first entry of configs/config.yaml's defaults,
    and the `job_dirname` resolver that names sweep folders."""
    ConfigStore.instance().store(name="config_schema", node=Config)
    if not OmegaConf.has_resolver("job_dirname"):
        OmegaConf.register_new_resolver("job_dirname", job_dirname)
