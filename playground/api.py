"""The playground from Python: a trained model to poke at, and experiments to run, without the command line.

    import playground
    trained = playground.load("outputs/<date>/<time>/checkpoints/best.pt")
    trained.translate(["3 1 4 1 5"])                      # ['5 1 4 1 3'], as mode=translate prints it
    trained.translate(["3 1 4"], beam_size=4, nbest=2)    # [[(-0.21, '4 1 3'), (-2.9, '4 1 3 3')]]
    trained.score(["3 1 4"], ["4 1 3"])                   # [(-0.13, 0.03)]: log-probability, NLL per token
    trained.attention("3 1 4", "4 1 3")                   # {"decoder.layers.1.cross_attn": (H, T, S), ...}
    trained.model, trained.tokenizers                     # the Transformer itself, and {"src": .., "tgt": ..}

    metrics, run_dir = playground.run(["model.heads=8", "trainer.max_steps=200"])

Mistakes raise playground.errors.UserError with the one-line message the command line prints.
"""

import datetime
import logging
from dataclasses import fields
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from .checks import check_decode, check_decode_vocabulary
from .config import DecodeConfig
from .data import BOS
from .errors import UserError
from .inference import Encoder, load_trained, score, translate
from .setup import autocast_for, resolve_device, resolve_precision


class Trained:
    """A trained model with its tokenizers, on its device, in its precision: what mode=translate and mode=score use."""

    def __init__(self, model, src_tokenizer, tgt_tokenizer, config, device, precision):
        self.model, self.config, self.device, self.precision = model, config, device, precision
        self.tokenizers = {"src": src_tokenizer, "tgt": tgt_tokenizer}
        self.autocast = autocast_for(device, precision)

    def translate(self, lines, **decode):
        """Translate each line as mode=translate does, with any decode group setting (beam_size=4, nbest=3,
        sampling=True, top_p=0.9, ...): a list of texts, or with nbest > 1 a list of [(score, text), ...] best first."""
        unknown = sorted(set(decode) - {f.name for f in fields(DecodeConfig)})
        if unknown:
            raise UserError(f"translate(..., {unknown[0]}=...): not a decode setting (they are: "
                            f"{', '.join(f.name for f in fields(DecodeConfig))})")
        try:  # typed as the command line types decode.* (beam_size="4" is 4; 2.5 is no beam size)
            d = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DecodeConfig), decode))
        except ValidationError as e:
            raise UserError(f"translate(..., {e.key}={decode[e.key]!r}): {str(e).splitlines()[0]}") from None
        check_decode(d)
        check_decode_vocabulary(d, self.tokenizers["tgt"].vocab_size)
        encode = Encoder(self.tokenizers["src"], self.model.max_len)
        inputs = encode(_lines(lines, "translate(lines)"))
        encode.warn()  # a line cut to the model's positions, as mode=translate says on standard error
        results = translate(self.model, inputs, self.tokenizers["tgt"], d, self.device, self.autocast)
        return [hypotheses[0][1] for hypotheses in results] if d.nbest == 1 else results

    def score(self, sources, targets, batch_size: int = 64):
        """Each (source, target) pair's log-probability and NLL per target token (EOS counted), as mode=score."""
        sources, targets = _lines(sources, "score(sources, ...)"), _lines(targets, "score(..., targets)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise UserError(f"score(..., batch_size={batch_size!r}): the pairs scored together, a positive whole "
                            f"number")
        if len(sources) != len(targets):
            raise UserError(f"score: {len(sources)} sources but {len(targets)} targets (one target for each source)")
        src_encode = Encoder(self.tokenizers["src"], self.model.max_len, "source")
        tgt_encode = Encoder(self.tokenizers["tgt"], self.model.max_len - 1, "target")
        src, tgt = src_encode(sources), tgt_encode(targets)
        src_encode.warn()  # a cut text's score is the cut text's, as mode=score says on standard error
        tgt_encode.warn()
        return [(log_prob, -log_prob / tokens) for log_prob, tokens in
                score(self.model, src, tgt, batch_size, self.device, self.autocast)]

    def attention(self, source: str, target: str) -> dict:
        """Every attention layer's weights for one pair, teacher-forced: {name: (H, T, S)}, queries by keys
        (the target starts with BOS; self.tokenizers[side].piece(i) names each token)."""
        if not isinstance(source, str) or not isinstance(target, str) or not source.strip():
            raise UserError("attention(source, target) takes two texts, the source not empty")
        src_ids, tgt_ids = self.tokenizers["src"].encode(source), self.tokenizers["tgt"].encode(target)
        positions = f"the model's {self.model.max_len} positions (model.max_len)"  # maps of a cut text would mislead
        if len(src_ids) > self.model.max_len:
            raise UserError(f"attention(source, ...): {len(src_ids)} tokens, more than {positions}")
        if len(tgt_ids) + 1 > self.model.max_len:
            raise UserError(f"attention(..., target): {len(tgt_ids)} tokens and BOS, more than {positions}")
        src = torch.tensor([src_ids], device=self.device)
        tgt_in = torch.tensor([[BOS, *tgt_ids]], device=self.device)
        return {name: weights[0] for name, weights in self.model.attention_maps(src, tgt_in).items()}


def _lines(texts, where: str) -> list:
    """texts as a list of strings; one string, which would be read as a list of characters, is refused."""
    if isinstance(texts, str):
        shown = repr(texts) if len(texts) <= 20 else repr(texts[:20]) + "..."
        raise UserError(f"{where} takes a list of texts, not one text: write [{shown}]")
    texts = list(texts)
    wrong = next((t for t in texts if not isinstance(t, str)), None)
    if wrong is not None:
        raise UserError(f"{where} takes texts, and one item is a {type(wrong).__name__}: {wrong!r}")
    return texts


def load(path, device: str = "auto", precision: str = "auto", kernels: str = "reference") -> Trained:
    """A checkpoint (checkpoints/best.pt, last.pt, averaged.pt) as a Trained model; device and precision as
    trainer.device and trainer.precision choose them, and kernels as trainer.kernels (reference or fast)."""
    import playground.kernels  # noqa: F401 (registers kernels="fast", as the command line does)
    from .model import KERNELS

    if kernels not in KERNELS:
        raise UserError(f"trainer.kernels={kernels} is not one of: {', '.join(KERNELS)}")
    if not isinstance(device, str):  # a torch.device("cpu") would be refused as "trainer.device=cpu is not one of: cpu"
        raise UserError(f"load(..., device={device!r}): give its name, as trainer.device takes it (auto, cpu, cuda, mps)")
    model, saved, src_tok, tgt_tok, _ = load_trained(path, kernels)
    where = resolve_device(device)
    return Trained(model.to(where).eval(), src_tok, tgt_tok, saved, where, resolve_precision(where, precision))


def run(overrides=(), run_dir=None) -> tuple:
    """Train as `python transformer_playground.py OVERRIDES...` does, in this process: (metrics, run directory).
    The run directory is outputs/<date>/<time> under the current folder unless given."""
    from .checks import compose_checked
    from .experiment import run_train
    from .rundir import keep_record, note_created, run_file_in, undo_refused_run

    for override in overrides:  # what this would leave unread, silently: Hydra's own settings, another mode
        key = override.lstrip("+~").partition("=")[0]
        if key.startswith(("hydra.", "hydra/")):
            instead = "give the folder with run_dir=..." if key == "hydra.run.dir" else "run the command line for it"
            raise UserError(f"{override}: playground.run does not go through Hydra's run settings, so it would be "
                            f"ignored ({instead})")
    cfg = compose_checked(list(overrides))
    if cfg.mode != "train":
        raise UserError(f"mode={cfg.mode}: playground.run trains; for the other modes use playground.load(...) or the "
                        f"command line")
    if run_dir is None:
        run_dir = Path("outputs") / datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S.%f")
    run_dir = Path(run_dir)
    found = run_file_in(run_dir) if run_dir.is_dir() else None  # as the command line's RunDirectoryGuard refuses it
    if found and not (cfg.trainer.auto_resume and (run_dir / "checkpoints" / "last.pt").is_file()):
        raise UserError(f"{run_dir} already holds a run ({found}): refusing to write into it (give this run its own "
                        f"directory with run_dir=...)")
    note_created(run_dir)
    if found:  # a resume in its own directory: the record written below goes back if the resume is refused
        keep_record(run_dir / ".hydra", run_dir / "checkpoints" / "last.pt")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        undo_refused_run(run_dir)  # the folders above it that this made, if any
        why = "is a file, not a folder" if run_dir.is_file() else f"cannot be made ({e.strerror or e})"
        raise UserError(f"run_dir={run_dir} {why}: give the run a folder") from None
    # the record and the log a command line run has from Hydra: .hydra/config.yaml, transformer_playground.log
    (run_dir / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), run_dir / ".hydra" / "overrides.yaml")
    log = logging.FileHandler(run_dir / "transformer_playground.log")
    log.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    ours, level = logging.getLogger("playground"), logging.getLogger("playground").level
    ours.setLevel(logging.INFO)
    handlers = [log]
    if not logging.getLogger().hasHandlers():  # warnings still reach stderr, as logging's last resort sent them
        handlers.append(logging.StreamHandler())
        handlers[-1].setLevel(logging.WARNING)
    for handler in handlers:
        logging.getLogger().addHandler(handler)  # the root's, where log_file_only writes the final metrics
    try:
        return run_train(cfg, run_dir), run_dir
    except UserError:
        undo_refused_run(run_dir)  # a refused run leaves no run directory behind
        raise
    finally:
        for handler in handlers:
            logging.getLogger().removeHandler(handler)
        log.close()
        ours.setLevel(level)
