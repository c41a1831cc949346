"""A trained model at work: rebuilt from its checkpoint, it translates new text (mode=translate: text=, input_file=
or standard input) and scores given translations (mode=score), in batches of inputs of similar length.

Inputs are read as training reads its data: the whitespace around a line (a Windows \\r included) is stripped.
An empty line gives an empty output line. A line longer than the model's positions (model.max_len) is cut, and
one warning on standard error counts the lines cut. Output comes back in input order.
"""

import itertools
import math
import sys
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from .checkpoint import atomic_write, checkpoint_tokenizers, load_checkpoint, load_model_weights
from .checks import check_choices, check_decode, check_decode_vocabulary, check_model, check_trainer
from .config import Config, upgrade_saved_config
from .data import BOS, EOS, MODEL_IDS, PAD
from .data.parallel import decode_lines
from .errors import UserError
from .evaluate import decode, decode_nbest
from .export import is_exported, load_exported_weights, read_exported
from .model import build_model
from .setup import autocast_for, resolve_device, resolve_precision


def model_from_checkpoint(cfg):
    """Rebuild the model and tokenizers a checkpoint (or exported folder) was trained with: (model, saved config,
    src_tok, tgt_tok, state)."""
    if cfg.ckpt_path is None:
        raise UserError(f"mode={cfg.mode} needs ckpt_path=PATH (a checkpoints/last.pt or best.pt of a run)")
    model, saved, src_tok, tgt_tok, state = load_trained(cfg.ckpt_path, cfg.trainer.kernels)
    refuse_unused_overrides(cfg, saved)
    return model, saved, src_tok, tgt_tok, state


def load_trained(path, kernels: str = "reference"):
    """A checkpoint's model (on the CPU, its weights loaded), config, tokenizers and state: (model, saved config,
    src_tok, tgt_tok, state). `path` may also be a folder written by mode=export (playground/export.py)."""
    exported = is_exported(path)
    state = read_exported(path) if exported else load_checkpoint(path)
    try:
        saved = OmegaConf.merge(OmegaConf.structured(Config), upgrade_saved_config(state["config"]))
    except Exception as e:  # a key this version does not know, or a value of another type
        raise UserError(f"ckpt_path={path}: its config does not fit this version of the playground "
                        f"({str(e).splitlines()[0]})")
    src_tok, tgt_tok = checkpoint_tokenizers(state, path)
    check_model(saved.model, src_tok.vocab_size, tgt_tok.vocab_size)
    model = build_model(saved.model, src_tok.vocab_size, tgt_tok.vocab_size, kernels, **MODEL_IDS)
    if exported:
        load_exported_weights(model, path)
    else:
        load_model_weights(model, state["model"], path)
    return model, saved, src_tok, tgt_tok, state


# What each mode that starts from a checkpoint leaves unused: an override of one of these is refused, not dropped.
# A group name stands for all its keys; the checkpoint rebuilds the model and its tokenizers.
_INPUTS = {"text", "input_file", "reference_file", "output_file", "overwrite"}  # what translate and score read
_TRAINING = {f"trainer.{k}" for k in ("max_steps", "batch_size", "max_tokens", "grad_clip", "log_every", "accumulate",
                                      "eval_every", "monitor", "monitor_mode", "patience", "keep_last",
                                      "checkpoint_every", "on_nonfinite", "compile", "num_samples", "auto_resume",
                                      "resume_override")}
_TOKENIZERS = {f"dataset.{k}" for k in ("tokenizer", "vocab_size", "min_frequency", "shared_vocab")}
_FROM_CHECKPOINT = {"model", "optimizer", "scheduler", "experiment"}
_RUNNING = {"trainer.device", "trainer.precision", "trainer.kernels", "trainer.progress"}  # what decoding reads
UNUSED_BY_MODE = {
    # eval decodes in batches of trainer.eval_batch_size and scores the best hypothesis alone
    "eval": _FROM_CHECKPOINT | _TOKENIZERS | _TRAINING | _INPUTS | {"decode.batch_size", "decode.nbest"},
    "translate": _FROM_CHECKPOINT | {"dataset", "trainer", "reference_file"},
    "score": _FROM_CHECKPOINT | {"dataset", "trainer", "text", "decode"},  # it decodes nothing; decode.batch_size: kept
    "average": _FROM_CHECKPOINT | {"dataset", "trainer", "decode"} | _INPUTS,
    "export": _FROM_CHECKPOINT | {"dataset", "trainer", "decode"} | _INPUTS,
}


def refuse_unused_overrides(cfg, saved=None) -> None:
    """eval, translate, score, average and export work from a checkpoint: a command-line override they would not use
    (model.d_model=256, optimizer.*, a tokenizer setting, text= for eval; any dataset.* for translate and score) is
    refused in one line rather than dropped without a word. eval may name another dataset.test_file."""
    if not HydraConfig.initialized():  # called from Python: there is no command line
        return
    unused = UNUSED_BY_MODE[cfg.mode]
    overrides = list(HydraConfig.get().overrides.task)
    if cfg.get("text") is not None:  # transformer_playground.py takes text= off before Hydra parses the rest
        overrides.append(f"text={cfg.text}")
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        group = key.split(".")[0]
        another_dataset = key == "dataset" and saved is not None and value != saved.dataset.name
        kept = group == "trainer" and key in _RUNNING and cfg.mode in ("translate", "score")  # decoding reads them
        kept = kept or (key == "decode.batch_size" and cfg.mode == "score")  # the pairs scored together
        if (key in unused or (group in unused and not kept)) or another_dataset:
            raise UserError(f"{override}: mode={cfg.mode} {_WORKS_FROM[cfg.mode].format(ckpt=cfg.ckpt_path)}, so "
                            f"this would have no effect: remove it")


_WORKS_FROM = {
    "eval": "rebuilds the model and its tokenizers from ckpt_path={ckpt} and reads only its test data (dataset.* keys "
            "of files may name others), in batches of trainer.eval_batch_size",
    "translate": "rebuilds the model from ckpt_path={ckpt} and uses no dataset (text=, input_file=, output_file= and "
                 "decode.* are its settings)",
    "score": "rebuilds the model from ckpt_path={ckpt}, uses no dataset and decodes nothing (input_file=, "
             "reference_file=, output_file= and decode.batch_size are its settings)",
    "average": "averages the step_N.pt checkpoints in ckpt_path={ckpt}",
    "export": "writes the model, config and tokenizers of ckpt_path={ckpt}",
}


class Encoder:
    """Text lines -> id lists, stripped as in training and cut to `limit` tokens; counts the lines it cut."""

    def __init__(self, tokenizer, limit: int, side: str = "input"):
        self.tokenizer, self.limit, self.side, self.cut = tokenizer, limit, side, 0

    def __call__(self, lines) -> list:
        encoded = []
        for line in lines:
            text = line.strip()
            ids = self.tokenizer.encode(text) if text else []
            self.cut += len(ids) > self.limit
            encoded.append(ids[: self.limit])
        return encoded

    def warn(self) -> None:
        """One line on standard error for the lines cut so far (then the count starts again)."""
        if self.cut:
            lines = f"{self.cut} {self.side} line{'s' * (self.cut != 1)}"
            print(f"warning: {lines} longer than {self.limit} tokens (the model's positions, model.max_len) "
                  f"{'were' if self.cut != 1 else 'was'} cut to {self.limit} tokens", file=sys.stderr)
        self.cut = 0


def by_length(lengths, batch_size: int):
    """Batches of at most batch_size indices whose lengths are close, longest first (a batch too big for memory
    fails at once); length 0 (an empty input) is left out."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start: start + batch_size]


def padded(rows, device) -> torch.Tensor:
    """Id lists -> LongTensor (B, longest), PAD on the right."""
    width = max(map(len, rows))
    return torch.tensor([row + [PAD] * (width - len(row)) for row in rows], dtype=torch.long, device=device)


def translate(model, inputs, tgt_tok, d, device, autocast) -> list:
    """The decode settings d's output for each input id list: a list of nbest (score, text) per input, best first
    (the score is None for greedy decoding and sampling, which rank nothing). An empty input gives empty text."""
    results = [[(0.0 if d.nbest > 1 else None, "")] * d.nbest for _ in inputs]
    for rows in by_length([len(ids) for ids in inputs], d.batch_size):
        src = padded([inputs[i] for i in rows], device)
        with autocast():
            if d.nbest > 1:
                hypotheses, scores = decode_nbest(model, src, d)  # (B, N, L), (B, N)
                scores = scores.tolist()
            else:
                hypotheses, scores = decode(model, src, d)[:, None], [[None]] * len(rows)  # (B, 1, L)
        for i, row_hypotheses, row_scores in zip(rows, hypotheses.tolist(), scores):
            results[i] = [(score, tgt_tok.decode(ids)) for score, ids in zip(row_scores, row_hypotheses)]
    return results


def output_lines(results, first_index: int = 0) -> list:
    """The printed form: one text a line; with nbest > 1, fairseq's "H-<input index>\\t<score>\\t<text>" lines,
    nbest of them per input, best first (input index from 0; score: log-probability / length penalty). A newline
    inside a text (learned from JSONL) becomes a space, as in hypotheses.txt, so that line n answers input n."""
    results = [[(score, text.replace("\n", " ")) for score, text in hypotheses] for hypotheses in results]
    if len(results[0]) == 1 and results[0][0][0] is None:
        return [text for (_, text), in results]
    return [f"H-{first_index + i}\t{score:.4f}\t{text}" for i, hypotheses in enumerate(results)
            for score, text in hypotheses]


def _ready(cfg):
    """The checks every mode here shares, then the model on its device: (model, src_tok, tgt_tok, device, autocast)."""
    check_choices(cfg)
    t = OmegaConf.to_object(cfg.trainer)
    check_trainer(t)
    check_decode(cfg.decode, t)
    _check_output(cfg)
    device = resolve_device(t.device)
    autocast = autocast_for(device, resolve_precision(device, t.precision))
    model, _, src_tok, tgt_tok, _ = model_from_checkpoint(cfg)
    check_decode_vocabulary(cfg.decode, tgt_tok.vocab_size)
    torch.manual_seed(cfg.seed)  # decode.sampling draws from torch's generator: the same seed, the same samples
    return model.to(device).eval(), src_tok, tgt_tok, device, autocast


def _check_output(cfg) -> None:
    """output_file, if given, must be writable and must not replace a file unless overwrite=true: checked before
    any work, so a run never ends in an error after all its decoding."""
    if cfg.output_file is None:
        return
    path = Path(cfg.output_file)
    if not cfg.output_file or path.is_dir():
        raise UserError(f"output_file={cfg.output_file} is {'a folder' if cfg.output_file else 'empty'}: give a file")
    for key in ("input_file", "reference_file", "ckpt_path"):  # overwrite=true is for an old output, not the input
        source = Path(cfg[key]) if cfg.get(key) else None
        if source is None or not path.exists() or not source.exists():
            continue
        if path.samefile(source) or (source.is_dir() and path.parent.samefile(source)):  # an exported folder's file
            raise UserError(f"output_file={path} is {'the' if path.samefile(source) else 'a file of the'} {key}: the "
                            f"outputs would replace what they are made from (give another output_file)")
    if path.exists() and not cfg.overwrite:
        raise UserError(f"output_file={path} exists: refusing to overwrite it (overwrite=true replaces it)")
    if not path.parent.is_dir():
        raise UserError(f"output_file={path}: the folder {path.parent} does not exist")


def _read_lines(key: str, path) -> list:
    """The lines of a UTF-8 text file named by config key `key`, read as training reads its data."""
    if not Path(path).exists():
        raise UserError(f"{key}={path}: no such file")
    if Path(path).is_dir():
        raise UserError(f"{key}={path} is a folder, not a file")
    with open(path, "rb") as f:
        return [text for _, text in decode_lines(f, path)]


def _write(cfg, lines) -> None:
    """All output lines into output_file, replaced whole (an interrupted run leaves no half file)."""
    text = "".join(line + "\n" for line in lines)
    atomic_write(Path(cfg.output_file), lambda f: f.write(text.encode()))


def _stdin_lines():
    """Standard input's lines, read as bytes and decoded as files are (a text stream, as tests give, as it is)."""
    if hasattr(sys.stdin, "buffer"):
        return (text for _, text in decode_lines(sys.stdin.buffer, "standard input"))
    return iter(sys.stdin)


def _stdin_buffers(size: int):
    """Standard input in buffers of `size` lines; on a terminal, one line at a time after a prompt."""
    if not sys.stdin.isatty():
        lines = _stdin_lines()
        while buffer := list(itertools.islice(lines, size)):
            yield buffer
        return
    print("Type a sentence and press Enter to translate it; Ctrl-D or Ctrl-C ends.", file=sys.stderr)
    lines = _stdin_lines()
    while True:
        print("> ", end="", file=sys.stderr, flush=True)
        try:
            line = next(lines)
        except (StopIteration, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        yield [line]


def run_translate(cfg) -> None:
    """Translate text=..., or input_file's lines, or standard input's, as the decode group says; print each input's
    output (or write output_file)."""
    if cfg.text is not None and cfg.input_file is not None:
        raise UserError("text= and input_file= are both given: translate one or the other")
    model, src_tok, tgt_tok, device, autocast = _ready(cfg)
    encode = Encoder(src_tok, model.max_len)
    if cfg.text is not None or cfg.input_file is not None:
        lines = [cfg.text] if cfg.text is not None else _read_lines("input_file", cfg.input_file)
        buffers = [lines]
    else:
        buffers = _stdin_buffers(cfg.decode.batch_size)
    written, index, interactive = [], 0, cfg.text is None and cfg.input_file is None and sys.stdin.isatty()
    for lines in buffers:
        results = translate(model, encode(lines), tgt_tok, cfg.decode, device, autocast) if lines else []
        out = output_lines(results, index) if results else []
        index += len(lines)
        if cfg.output_file is not None:
            written += out
        elif out:
            print("\n".join(out), flush=True)
        if interactive:
            encode.warn()
    if cfg.output_file is not None:
        _write(cfg, written)
    encode.warn()


def _pairs(cfg) -> tuple:
    """mode=score's (sources, references): input_file and reference_file line by line, or input_file as a TSV."""
    if cfg.input_file is None:
        raise UserError("mode=score needs input_file=PATH (sources, with reference_file=PATH; or a TSV of "
                        "source<TAB>reference lines)")
    sources = _read_lines("input_file", cfg.input_file)
    if cfg.reference_file is not None:
        references = _read_lines("reference_file", cfg.reference_file)
        if len(references) != len(sources):
            raise UserError(f"reference_file={cfg.reference_file} has {len(references)} lines and "
                            f"input_file={cfg.input_file} {len(sources)}: line n of one must translate line n of the "
                            f"other")
        return sources, references
    pairs = []
    for number, line in enumerate(sources, 1):
        tabs = line.count("\t")
        if tabs != 1:
            found = "no TAB" if tabs == 0 else f"{tabs} TABs"
            raise UserError(f"{cfg.input_file} line {number}: expected \"source<TAB>reference\", found {found} "
                            f"(or give the references in reference_file=PATH)")
        pairs.append(line.split("\t"))
    return [s for s, _ in pairs], [r for _, r in pairs]


@torch.no_grad()
def score(model, sources, targets, batch_size, device, autocast) -> list:
    """The model's log-probability of each target id list given its source, teacher-forced and summed over the
    target's tokens and EOS, with that token count: [(log_prob, tokens)]. An empty source scores nan."""
    results = [(math.nan, len(t) + 1) for t in targets]
    for rows in by_length([len(s) for s in sources], batch_size):
        src = padded([sources[i] for i in rows], device)  # (B, S)
        tgt = padded([[BOS, *targets[i], EOS] for i in rows], device)  # (B, T+1)
        tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
        with autocast():
            logits = model(src, tgt_in)  # (B, T, V)
        log_probs = logits.float().log_softmax(-1).gather(-1, tgt_out[..., None])[..., 0]  # (B, T)
        sums = log_probs.masked_fill(tgt_out == PAD, 0.0).sum(1)  # (B,)
        for i, value in zip(rows, sums.tolist()):
            results[i] = (value, len(targets[i]) + 1)
    return results


def run_score(cfg) -> None:
    """Write, for each (source, reference) pair, the log-probability of the reference and its NLL per target token,
    as "<log_prob>\\t<nll per token>" lines; the corpus NLL and perplexity go to standard error."""
    if cfg.text is not None:
        raise UserError("mode=score reads input_file= (and reference_file=); text= is for mode=translate")
    sources, references = _pairs(cfg)
    model, src_tok, tgt_tok, device, autocast = _ready(cfg)
    src_encode, tgt_encode = Encoder(src_tok, model.max_len, "source"), Encoder(tgt_tok, model.max_len - 1, "reference")
    results = score(model, src_encode(sources), tgt_encode(references), cfg.decode.batch_size, device, autocast)
    lines = [f"{log_prob:.4f}\t{-log_prob / tokens:.4f}" for log_prob, tokens in results]
    if cfg.output_file is not None:
        _write(cfg, lines)
    elif lines:
        print("\n".join(lines), flush=True)
    src_encode.warn()
    tgt_encode.warn()
    scored = [(log_prob, tokens) for log_prob, tokens in results if not math.isnan(log_prob)]
    if len(scored) < len(results):
        unscored = len(results) - len(scored)
        were = "pairs with an empty source were" if unscored != 1 else "pair with an empty source was"
        print(f"warning: {unscored} {were} not scored (nan)", file=sys.stderr)
    if scored:
        nll = -sum(lp for lp, _ in scored) / sum(n for _, n in scored)
        print(f"scored {len(scored)} pairs, {sum(n for _, n in scored)} target tokens (EOS included): "
              f"NLL {nll:.4f} nats a token, perplexity {math.exp(min(nll, 700.0)):.2f}", file=sys.stderr)
