"""The training loop and what it needs: optimiser, learning-rate schedule, device and precision."""

import contextlib
import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .errors import UserError
from .model import PAD


def resolve_device(name: str) -> torch.device:
    """trainer.device: auto picks cuda, then mps, then cpu; an explicit device must exist on this machine."""
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if available[d]))
    if name not in available:
        raise UserError(f"trainer.device={name} is not one of: auto, cpu, cuda, mps")
    if not available[name]:
        raise UserError(f"trainer.device={name} but this machine has no {name} device (try trainer.device=auto)")
    return torch.device(name)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_for(device: torch.device, precision: str):
    """A function returning the autocast context for trainer.precision (a no-op context for fp32)."""
    if precision not in PRECISIONS:
        raise UserError(f"trainer.precision={precision} is not one of: {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    if precision == "fp16" and device.type != "cuda":
        raise UserError(f"trainer.precision=fp16 needs trainer.device=cuda (on {device.type}, use bf16)")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("trainer.precision=bf16 but this GPU has no bf16 support (use fp16)")
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def build_optimizer(opt_cfg, params, device: torch.device) -> torch.optim.Optimizer:
    """optimizer.name: adam (the paper's, Section 5.3), adamw or sgd; one fused/foreach kernel, not a loop per tensor."""
    if opt_cfg.lr <= 0:
        raise UserError(f"optimizer.lr={opt_cfg.lr} must be positive")
    fused = device.type == "cuda"
    if opt_cfg.name in ("adam", "adamw"):
        if len(opt_cfg.betas) != 2 or not all(0 <= b < 1 for b in opt_cfg.betas):
            raise UserError(f"optimizer.betas={list(opt_cfg.betas)} must be two numbers in [0, 1)")
        cls = torch.optim.Adam if opt_cfg.name == "adam" else torch.optim.AdamW
        return cls(params, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps,
                   weight_decay=opt_cfg.weight_decay, fused=fused, foreach=None if fused else True)
    if opt_cfg.name == "sgd":
        return torch.optim.SGD(params, lr=opt_cfg.lr, momentum=opt_cfg.momentum, weight_decay=opt_cfg.weight_decay)
    raise UserError(f"optimizer.name={opt_cfg.name} is not one of: adam, adamw, sgd")


def noam(step, warmup, max_steps, min_ratio):
    """Section 5.3: lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), here divided by its peak value
    d_model^-0.5 * warmup^-0.5 so that optimizer.lr is the peak (the paper's base model: lr = 7e-4, warmup 4000)."""
    step = max(step, 1)
    return min(step / warmup, math.sqrt(warmup / step))


def cosine(step, warmup, max_steps, min_ratio):
    """Linear warmup, then a half cosine from the peak down to min_ratio * peak at max_steps."""
    if step < warmup:
        return max(step, 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def constant(step, warmup, max_steps, min_ratio):
    """The same learning rate throughout."""
    return 1.0


SCHEDULES = {"noam": noam, "cosine": cosine, "constant": constant}


def build_scheduler(sched_cfg, optimizer, max_steps: int):
    """scheduler.name picks the multiplier of optimizer.lr at each step."""
    if sched_cfg.name not in SCHEDULES:
        raise UserError(f"scheduler.name={sched_cfg.name} is not one of: {', '.join(SCHEDULES)}")
    if sched_cfg.warmup_steps <= 0 and sched_cfg.name != "constant":
        raise UserError(f"scheduler.warmup_steps={sched_cfg.warmup_steps} must be positive")
    fn = SCHEDULES[sched_cfg.name]
    warmup, min_ratio = sched_cfg.warmup_steps, sched_cfg.min_lr_ratio
    # LambdaLR counts from 0 before the first step; the paper's step_num counts from 1
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: fn(i + 1, warmup, max_steps, min_ratio))


def sequence_loss(logits, tgt_out, label_smoothing):
    """Cross-entropy over real target tokens (PAD ignored), with label smoothing, computed in fp32."""
    return F.cross_entropy(logits.float().flatten(0, 1), tgt_out.flatten(), ignore_index=PAD,
                           label_smoothing=label_smoothing)


def batch_stream(num_examples, batch_size, generator, batches_fn):
    """Endless training batches: a new seeded shuffle every epoch."""
    while True:
        yield from batches_fn(num_examples, batch_size, shuffle=True, generator=generator)


def train(model, optimizer, scheduler, train_data, batches, settings, device, autocast, on_eval, tracker,
          start_step=0):
    """Teacher-forced training for settings.max_steps steps; `on_eval(step)` evaluates and checkpoints."""
    params = [p for p in model.parameters() if p.requires_grad]
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")  # fp16 gradients underflow
    loss_sum = torch.zeros((), device=device)  # summed on the device; read back only every log_every steps
    tokens, t0 = 0, time.perf_counter()
    bar = tqdm(total=settings.max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
    model.train()
    for step in range(start_step + 1, settings.max_steps + 1):
        src, tgt = (t.to(device, non_blocking=True) for t in train_data.batch(next(batches)))
        tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]  # (B, T): the decoder reads BOS y1.., predicts y1.. EOS
        with autocast():
            logits = model(src, tgt_in)  # (B, T, V)
        loss = sequence_loss(logits, tgt_out, settings.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if settings.grad_clip > 0:
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += loss.detach()
        tokens += tgt_out.numel()
        bar.update(1)
        if step % settings.log_every == 0 or step == settings.max_steps:
            elapsed = time.perf_counter() - t0
            window = (step - 1) % settings.log_every + 1
            values = {"train/loss": loss_sum.item() / window, "train/lr": scheduler.get_last_lr()[0],
                      "train/tokens_per_sec": tokens / elapsed}
            if settings.grad_clip > 0:
                values["train/grad_norm"] = grad_norm.item()
            tracker.scalars(values, step)
            bar.set_postfix(loss=f"{values['train/loss']:.3f}", lr=f"{values['train/lr']:.2e}")
            loss_sum.zero_()
            tokens, t0 = 0, time.perf_counter()
        if step % settings.eval_every == 0 or step == settings.max_steps:
            on_eval(step)
            bar.refresh()
            t0 = time.perf_counter()  # evaluation time is not training throughput
    bar.close()
