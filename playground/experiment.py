"""What each mode does, from a composed config to files in the run directory: train, eval and translate."""

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .config import Config
from .checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from .data import PaddedPairs, SymbolTokenizer, fixed_size_batches, make_synthetic_splits, tokenizer_from_dict
from .errors import UserError
from .evaluate import evaluate
from .model import build_model
from .tracking import Tracker
from .train import autocast_for, batch_stream, build_optimizer, build_scheduler, resolve_device, train

log = logging.getLogger(__name__)


@dataclass
class Data:
    src_tokenizer: object
    tgt_tokenizer: object
    splits: dict  # split name -> PaddedPairs


def load_data(dataset_cfg) -> Data:
    """Build the tokenizers and the train/valid/test splits a dataset config describes."""
    c = dataset_cfg
    sizes = {"train": c.num_train, "valid": c.num_valid, "test": c.num_test}
    pairs = make_synthetic_splits(c.name, c.vocab_size, c.min_len, c.max_len, sizes, c.seed)
    tokenizer = SymbolTokenizer(c.vocab_size)
    offset = tokenizer.vocab_size - c.vocab_size  # symbol s has id offset + s
    splits = {split: PaddedPairs([([offset + s for s in src], [offset + s for s in tgt]) for src, tgt in examples])
              for split, examples in pairs.items()}
    return Data(tokenizer, tokenizer, splits)


def check_trainer(t) -> None:
    """Trainer values a type cannot check, each refused with the key's name."""
    for key in ("max_steps", "batch_size", "log_every", "eval_every", "eval_batch_size", "beam_size"):
        if getattr(t, key) <= 0:
            raise UserError(f"trainer.{key}={getattr(t, key)} must be positive")
    if not 0.0 <= t.label_smoothing < 1.0:
        raise UserError(f"trainer.label_smoothing={t.label_smoothing} must be in [0, 1)")
    if t.grad_clip < 0:
        raise UserError(f"trainer.grad_clip={t.grad_clip} must be 0 (off) or positive")


def _sample_table(data, predictions, src_tok, tgt_tok, n) -> str:
    rows = ["| source | reference | prediction |", "|---|---|---|"]
    for i in range(min(n, len(data))):
        rows.append(f"| {src_tok.decode(data.src[i])} | {tgt_tok.decode(data.tgt[i, 1:])} | "
                    f"{tgt_tok.decode(predictions[i])} |")
    return "\n".join(rows)


def _log_attention(tracker, model, data: Data, device, step) -> None:
    """Heatmaps of every attention layer for the first validation example, tokens on the axes."""
    src, tgt = (t.to(device) for t in data.splits["valid"].batch(torch.tensor([0])))
    was_training = model.training
    model.eval()
    maps = model.attention_maps(src, tgt[:, :-1])  # {name: (1, H, T, S)}
    model.train(was_training)
    src_pieces = [data.src_tokenizer.piece(i) for i in src[0].tolist()]
    tgt_pieces = [data.tgt_tokenizer.piece(i) for i in tgt[0, :-1].tolist()]
    for name, weights in maps.items():
        queries = src_pieces if name.startswith("encoder") else tgt_pieces
        keys = tgt_pieces if name.startswith("decoder") and name.endswith("self_attn") else src_pieces
        tracker.attention(f"attention/{name}", weights[0], queries, keys, step)


HPARAM_GROUPS = ("model", "dataset", "optimizer", "scheduler", "trainer")
HPARAM_METRICS = ("test/exact_match", "test/token_accuracy", "test/loss", "valid/exact_match", "valid/loss")


def flat_hparams(cfg) -> dict:
    """The run's hyper-parameters as one flat dict: model.heads, optimizer.lr, ..., seed."""
    params = {f"{group}.{key}": value for group in HPARAM_GROUPS
              for key, value in OmegaConf.to_container(cfg[group], resolve=True).items()}
    params["seed"] = cfg.seed
    return params


def _evaluator(model, data: Data, t, device, autocast):
    def run(split):
        return evaluate(model, data.splits[split], t.eval_batch_size, device, autocast, t.label_smoothing,
                        t.beam_size, t.length_penalty, t.max_len_a, t.max_len_b, model.max_len)
    return run


def _write_metrics(run_dir: Path, split: str, metrics: dict, step: int, extra: dict = None) -> dict:
    flat = {f"{split}/{k}": v for k, v in metrics.items()}
    flat.update(extra or {})
    flat["step"] = step
    (run_dir / "metrics.json").write_text(json.dumps(flat, indent=2) + "\n")
    return flat


def run_train(cfg, run_dir: Path) -> dict:
    """Train, evaluating on valid every trainer.eval_every steps; test the best checkpoint; write metrics.json."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if (ckpt_dir / "last.pt").exists():
        raise UserError(f"{run_dir} already holds a run's checkpoints: refusing to overwrite them "
                        f"(give this run its own directory with hydra.run.dir=...)")
    t = OmegaConf.to_object(cfg.trainer)  # plain dataclass from here on: the loop never reads the config tree
    check_trainer(t)
    device = resolve_device(t.device)
    autocast = autocast_for(device, t.precision)
    data = load_data(cfg.dataset)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.src_tokenizer.vocab_size, data.tgt_tokenizer.vocab_size).to(device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), device)
    scheduler = build_scheduler(cfg.scheduler, optimizer, t.max_steps)
    num_params = sum(p.numel() for p in model.parameters())
    log.info(f"model: {num_params:,} parameters on {device}, {t.precision}; "
             f"data: {', '.join(f'{k} {len(v)}' for k, v in data.splits.items())} examples")

    tracker = Tracker(run_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    tracker.text("config", "```yaml\n" + OmegaConf.to_yaml(cfg) + "```", 0)
    tracker.hparams(flat_hparams(cfg), HPARAM_METRICS)
    evaluate_split = _evaluator(model, data, t, device, autocast)
    tokenizers = {"src": data.src_tokenizer.to_dict(), "tgt": data.tgt_tokenizer.to_dict()}
    best = {"exact_match": -1.0}

    def checkpoint_state(step, metrics):
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "config": config, "tokenizers": tokenizers,
                "metrics": metrics}

    def on_eval(step):
        metrics, predictions = evaluate_split("valid")
        tracker.scalars({f"valid/{k}": v for k, v in metrics.items()}, step)
        tracker.text("valid/samples", _sample_table(data.splits["valid"], predictions, data.src_tokenizer,
                                                    data.tgt_tokenizer, t.num_samples), step)
        _log_attention(tracker, model, data, device, step)
        log.info(f"step {step}: " + ", ".join(f"valid/{k} {v:.4f}" for k, v in metrics.items()))
        state = checkpoint_state(step, metrics)
        save_checkpoint(ckpt_dir / "last.pt", state)
        if metrics["exact_match"] > best["exact_match"]:
            best.update(metrics)
            save_checkpoint(ckpt_dir / "best.pt", state)

    g = torch.Generator().manual_seed(cfg.seed)
    batches = batch_stream(len(data.splits["train"]), t.batch_size, g, fixed_size_batches)
    train(model, optimizer, scheduler, data.splits["train"], batches, t, device, autocast, on_eval, tracker)

    best_state = load_checkpoint(ckpt_dir / "best.pt")
    model.load_state_dict(best_state["model"])
    metrics, _ = evaluate_split("test")
    tracker.scalars({f"test/{k}": v for k, v in metrics.items()}, t.max_steps)
    tracker.close()
    valid = {f"valid/{k}": v for k, v in best_state["metrics"].items()}  # the checkpoint's validation scores
    flat = _write_metrics(run_dir, "test", metrics, best_state["step"], valid)
    _report(flat, run_dir)
    return flat


def _report(flat: dict, run_dir: Path) -> None:
    width = max(map(len, flat))
    print("\n".join(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}"
                    for k, v in flat.items()))
    print(f"run directory: {run_dir}\nview it with:  tensorboard --logdir {run_dir}")


def _model_from_checkpoint(cfg):
    """Rebuild the model, tokenizers and device a checkpoint was trained with."""
    if cfg.ckpt_path is None:
        raise UserError(f"mode={cfg.mode} needs ckpt_path=PATH (a checkpoints/last.pt or best.pt of a run)")
    state = load_checkpoint(cfg.ckpt_path)
    try:
        saved = OmegaConf.merge(OmegaConf.structured(Config), state["config"])
    except Exception as e:  # a key this version does not know, or a value of another type
        raise UserError(f"ckpt_path={cfg.ckpt_path}: its config does not fit this version of the playground "
                        f"({str(e).splitlines()[0]})")
    src_tok = tokenizer_from_dict(state["tokenizers"]["src"])
    tgt_tok = tokenizer_from_dict(state["tokenizers"]["tgt"])
    model = build_model(saved.model, src_tok.vocab_size, tgt_tok.vocab_size)
    load_model_weights(model, state["model"], cfg.ckpt_path)
    return model, saved, src_tok, tgt_tok, state


def run_eval(cfg, run_dir: Path) -> dict:
    """Evaluate a checkpoint on the test split of the dataset it was trained on; write metrics.json here."""
    model, saved, _, _, state = _model_from_checkpoint(cfg)
    t = OmegaConf.to_object(cfg.trainer)
    check_trainer(t)
    device = resolve_device(t.device)
    autocast = autocast_for(device, t.precision)
    model.to(device)
    data = load_data(saved.dataset)
    metrics, _ = _evaluator(model, data, t, device, autocast)("test")
    flat = _write_metrics(Path(run_dir), "test", metrics, state["step"])
    _report(flat, Path(run_dir))
    return flat


def run_translate(cfg) -> None:
    """Print the model's output for `text=...`, or for each line of standard input."""
    model, saved, src_tok, tgt_tok, _ = _model_from_checkpoint(cfg)
    t = OmegaConf.to_object(cfg.trainer)
    check_trainer(t)
    device = resolve_device(t.device)
    model.to(device).eval()
    lines = [cfg.text] if cfg.text is not None else (line.rstrip("\n") for line in sys.stdin)
    for line in lines:
        ids = src_tok.encode(line)[: model.max_len] or [0]
        src = torch.tensor([ids], device=device)
        limit = min(int(t.max_len_a * len(ids) + t.max_len_b), model.max_len - 1)
        out = model.generate(src, limit, beam_size=t.beam_size, length_penalty=t.length_penalty)
        print(tgt_tok.decode(out[0].tolist()), flush=True)
