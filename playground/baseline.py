"""torch.nn.Transformer trained on a run's data, batch, steps and recipe: the yardstick for its test scores.

    python -m playground.baseline dataset=text_pairs dataset.train_file=data/train.tsv model=small

It takes the overrides transformer_playground.py takes and changes one thing only, the model: nn.Transformer's
layers with model.d_model, heads, layers, d_ff and dropout (post-norm and ReLU, as in the paper), inside the same
embeddings, sinusoidal positions and output layer (tied to the target embedding unless model.tie_embeddings=none).
The data, tokenizers, batches, loss, optimiser, schedule and training loop are this project's. It evaluates on
valid every trainer.eval_every steps, keeps the weights of the best trainer.monitor, and prints their test scores
(greedy decoding). It writes nothing.
"""

import sys

import torch

from .bench import TorchTransformer
from .checks import check_run_config, compose_checked
from .config import DecodeConfig
from .data import MODEL_IDS, load_data
from .data.synthetic import TASKS
from .errors import UserError
from .evaluate import evaluate, text_metrics
from .model import sequence_loss
from .setup import autocast_for, build_optimizer, build_scheduler, resolve_device, resolve_precision, resolve_recipe
from .tracking import Tracker
from .train import BatchStream, Monitor, Training, resolve_monitor, train


def scores(model, data, split, t, decoding, device, autocast) -> dict:
    metrics, predictions = evaluate(model, data.splits[split], t.eval_batch_size, device, autocast,
                                    t.label_smoothing, decoding)
    hypotheses = [data.tgt_tokenizer.decode(ids) for ids in predictions]
    metrics.update(text_metrics(hypotheses, [reference for _, reference in data.texts[split]]))
    return metrics


def run(overrides) -> dict:
    cfg = compose_checked(overrides)  # a misspelt key or a wrong type: one line, as on the command line
    t = check_run_config(cfg)  # and the checks a run makes before it reads data (model.heads dividing d_model, ...)
    d = cfg.decode  # nn.Transformer is decoded greedily, within the decode group's lengths
    decoding = DecodeConfig(max_len_a=d.max_len_a, max_len_b=d.max_len_b)
    device = resolve_device(t.device)
    t.precision = resolve_precision(device, t.precision)
    autocast = autocast_for(device, t.precision)
    torch.backends.mha.set_fastpath_enabled(False)  # its fused inference path ignores CPU bf16 autocast
    monitor = Monitor(*resolve_monitor(t.monitor, t.monitor_mode, cfg.dataset.name not in TASKS), t.patience)
    print(resolve_recipe(cfg, t.max_steps), flush=True)
    data = load_data(cfg.dataset)
    torch.manual_seed(cfg.seed)
    m = cfg.model
    model = TorchTransformer(data.src_tokenizer.vocab_size, m.d_model, m.heads, m.enc_layers, m.d_ff, m.dropout,
                             tgt_vocab=data.tgt_tokenizer.vocab_size, dec_layers=m.dec_layers,
                             tie_output=m.tie_embeddings != "none", max_len=m.max_len,
                             embedding_dropout=True).to(device)
    print(f"nn.Transformer: {sum(p.numel() for p in model.parameters()):,} parameters on {device}, {t.precision}",
          flush=True)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), device)
    training = Training(model=model, optimizer=optimizer, scheduler=build_scheduler(cfg.scheduler, optimizer, t.max_steps),
                        scaler=torch.amp.GradScaler(device.type, enabled=t.precision == "fp16"), loss_fn=sequence_loss,
                        pad_id=MODEL_IDS["pad_id"], device=device, autocast=autocast)
    best = {}

    def on_eval(step) -> bool:
        metrics = scores(model, data, "valid", t, decoding, device, autocast)
        print(f"step {step}: " + ", ".join(f"valid/{k} {v:.4f}" for k, v in metrics.items()), flush=True)
        if monitor.update({f"valid/{k}": v for k, v in metrics.items()}, step):
            best.update(step=step, weights={k: v.detach().clone() for k, v in model.state_dict().items()})
        return monitor.exhausted

    batches = BatchStream(data.splits["train"], t.batch_size, cfg.seed, max_tokens=t.max_tokens)
    train(training, t, data.splits["train"], batches, Tracker(None, enabled=False), on_eval, lambda step: None)
    model.load_state_dict(best["weights"])
    flat = {f"test/{k}": v for k, v in scores(model, data, "test", t, decoding, device, autocast).items()}
    flat.update({"step": best["step"], monitor.metric: monitor.best})
    print("\n".join(f"{k:<20}  {v:.4f}" if isinstance(v, float) else f"{k:<20}  {v}" for k, v in flat.items()))
    return flat


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__.strip())
        sys.exit(0)
    try:
        run(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
