"""The config schema: one dataclass per config group, registered in Hydra's ConfigStore.

Hydra merges configs/config.yaml and the chosen group files onto these dataclasses, so a value of the
wrong type or a key that does not exist is refused before anything runs. Values that a type cannot
check (heads dividing d_model, an option's name, lengths that fit the model) are checked by
playground/checks.py, before any work, and raise playground.errors.UserError naming the key.
"""

import hashlib
from dataclasses import MISSING, dataclass, field, fields
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


@dataclass
class ModelConfig:
    d_model: int = 128  # width of every sublayer's input and output (d_model)
    heads: int = 4  # attention heads (h); must divide d_model
    enc_layers: int = 2  # encoder layers (N)
    dec_layers: int = 2  # decoder layers (N)
    d_ff: int = 512  # inner width of the position-wise feed-forward network (d_ff)
    dropout: float = 0.0  # P_drop (Section 5.4): on the sums of embeddings and positions, and each sublayer's output
    attention_dropout: Optional[float] = None  # on the attention weights (not the paper's; nn.Transformer's); null: dropout
    ffn_dropout: Optional[float] = None  # on the feed-forward's hidden layer (not the paper's either); null: dropout
    norm_position: str = "post"  # post (paper: norm after the residual add) | pre
    norm: str = "layernorm"  # layernorm (paper) | rmsnorm
    final_norm: bool = False  # one more norm after the last layer of each stack (nn.Transformer has it)
    positional: str = "sinusoidal"  # sinusoidal (paper) | learned | rotary | none
    activation: str = "relu"  # feed-forward activation: relu (paper) | gelu | swiglu
    attention: Optional[str] = None  # retired: how attention is computed is trainer.kernels now (refused if set)
    tie_embeddings: str = "decoder"  # none | decoder (output layer shares the target embedding) | all (source too:
    # the paper's, Section 3.4, which needs one vocabulary for both sides)
    max_len: int = 512  # the longest sequence the positional encodings cover
    key_dim: Optional[int] = None  # d_k, each head's query and key size (Table 3 row B); null: d_model/heads
    ablate: List[str] = field(default_factory=list)  # pieces of the paper to remove: causal_mask, attention_scale,
    # padding_mask, residual, layer_norm, embedding_scale, positional (docs/ablations.md shows what each does)


@dataclass
class DatasetConfig:
    name: str = "reverse"  # copy | reverse | sort (synthetic) | text_pairs (local files) | opus_books (the hub)
    vocab_size: int = 16  # synthetic: number of symbols; text: the largest vocabulary (bpe also keeps each character seen)
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
    hub_name: Optional[str] = None  # a Hugging Face dataset with a translation column, or a local copy of one
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


MODES = ("train", "eval", "translate", "score", "average", "export")


RETIRED_TRAINER_KEYS = ("beam_size", "length_penalty", "max_len_a", "max_len_b")  # now in the decode group


def upgrade_saved_config(config: dict) -> dict:
    """A checkpoint's config as this version names it: model.attention (before trainer.kernels) is dropped,
    trainer.beam_size and friends (before the decode group) move to decode.*, and a model saved before
    model.attention_dropout and model.ffn_dropout dropped out its attention weights and feed-forward hidden layer
    with model.dropout, which is what null says (so that resuming it with model=base, which sets 0, is refused)."""
    config = {**config}
    if isinstance(config.get("model"), dict):
        model = {k: v for k, v in config["model"].items() if k != "attention"}
        config["model"] = {"attention_dropout": None, "ffn_dropout": None, **model}
    trainer = config.get("trainer")
    if isinstance(trainer, dict) and any(key in trainer for key in RETIRED_TRAINER_KEYS):
        moved = {key: trainer[key] for key in RETIRED_TRAINER_KEYS if trainer.get(key) is not None}
        config["trainer"] = {k: v for k, v in trainer.items() if k not in RETIRED_TRAINER_KEYS}
        config["decode"] = {**moved, **config.get("decode", {})}
    return config


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


def config_sections() -> dict:
    """The schema's sections by name: {"model": ModelConfig, ...}."""
    return {f.name: f.default_factory for f in fields(Config) if f.default_factory is not MISSING}


def register_configs() -> None:
    """Make the schema known to Hydra as `config_schema`, the first entry of configs/config.yaml's defaults,
    and the `job_dirname` resolver that names sweep folders."""
    ConfigStore.instance().store(name="config_schema", node=Config)
    if not OmegaConf.has_resolver("job_dirname"):
        OmegaConf.register_new_resolver("job_dirname", job_dirname)
