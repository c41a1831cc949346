"""The training loop and what it needs: optimiser, learning-rate schedule, device and precision."""

import contextlib
import math
import os
import shutil
import signal
import sys
import threading
import time

import torch
from tqdm import tqdm

from .data.batching import token_budget_batches
from .distributed import Dist, sum_across
from .errors import UserError
from .loss import sequence_loss


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


def compile_unavailable(device: torch.device):
    """Why torch.compile cannot work here, or None: dynamo needs a supported Python, inductor on the CPU a C++ compiler."""
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support Python {sys.version.split()[0]} with torch {torch.__version__}"
    compilers = (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")
    if device.type == "cpu" and not any(shutil.which(c) for c in compilers):
        return "no C++ compiler found (inductor compiles CPU kernels with one: install g++ or set CXX)"
    return None


def maybe_compile(model, enabled: bool, device: torch.device, warn=print):
    """trainer.compile: the model under torch.compile, or, where it cannot be compiled, the model itself and a message.

    A graph that fails to compile later (an unsupported operation, a compiler error) runs eagerly instead of
    stopping the run: torch._dynamo.config.suppress_errors, which prints what failed.
    """
    if not enabled:
        return model
    reason = compile_unavailable(device)
    if reason:
        warn(f"trainer.compile=true but {reason}: training without torch.compile")
        return model
    torch._dynamo.config.suppress_errors = True
    return torch.compile(model)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX) rather than emulating them."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_precision(device: torch.device, precision: str) -> str:
    """trainer.precision: auto is bf16 where the hardware computes in it natively (a CUDA GPU with bf16, a CPU
    with AVX512-BF16 or AMX: 2x to 6x the fp32 matrix throughput) and fp32 elsewhere; other values pass through."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"  # not V100/T4
    return "bf16" if device.type == "cpu" and cpu_computes_bf16() else "fp32"


def autocast_for(device: torch.device, precision: str):
    """A function returning the autocast context for trainer.precision (a no-op context for fp32)."""
    precision = resolve_precision(device, precision)
    if precision not in PRECISIONS:
        raise UserError(f"trainer.precision={precision} is not one of: auto, {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    if precision == "fp16" and device.type != "cuda":
        raise UserError(f"trainer.precision=fp16 needs trainer.device=cuda (on {device.type}, use bf16)")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("trainer.precision=bf16 but this GPU has no bf16 support (use fp16)")
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def build_optimizer(opt_cfg, params, device: torch.device) -> torch.optim.Optimizer:
    """optimizer.name: adam (the paper's, Section 5.3), adamw or sgd; Adam is one fused kernel, not a loop per tensor.

    torch has fused Adam on the CPU and CUDA: on the CPU it is 4x faster than the default per-tensor loop and 6x
    faster than foreach, which allocates a temporary per tensor and step (78M parameters: 24 vs 97 vs 157 ms).
    """
    if opt_cfg.lr <= 0:
        raise UserError(f"optimizer.lr={opt_cfg.lr} must be positive")
    fused = device.type in ("cpu", "cuda")
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


class BatchStream:
    """Endless training batches, drawn anew each epoch from (seed, epoch) alone.

    Batches are batch_size pairs in random order, or with max_tokens > 0 length-bucketed batches of at
    most max_tokens padded tokens (token_budget_batches). `position` counts the batches handed out: it is
    the data position a checkpoint stores, so a resumed run sees exactly the batches the uninterrupted
    run would have. With several processes each step takes world_size batches' worth, one share each.
    """

    def __init__(self, data, batch_size, seed, world_size=1, rank=0, position=0, max_tokens=0):
        self.data, self.batch_size, self.max_tokens = data, batch_size, max_tokens
        self.seed, self.world_size, self.rank, self.position = seed, world_size, rank, position
        n = len(data)
        if max_tokens:
            if max_tokens < int(data.lengths().max()):
                raise UserError(f"trainer.max_tokens={max_tokens} is less than the longest training pair "
                                f"({int(data.lengths().max())} tokens)")
        elif batch_size * world_size > n:
            raise UserError(f"trainer.batch_size={batch_size}{f' times {world_size} processes' if world_size > 1 else ''}"
                            f" is more than the {n} training examples")
        self._epoch, self._batches = None, None

    def _epoch_batches(self, epoch):
        g = torch.Generator().manual_seed(self.seed + epoch)
        if self.max_tokens:
            batches = token_budget_batches(self.data.lengths(), self.max_tokens, g)
        else:
            order = torch.randperm(len(self.data), generator=g)
            size = self.batch_size * self.world_size
            batches = list(order.split(size)) if self.world_size == 1 else \
                [b.tensor_split(self.world_size)[r] for b in order.split(size) if len(b) == size
                 for r in range(self.world_size)]  # every process needs rows at every step
        usable = len(batches) - len(batches) % self.world_size
        if usable == 0:
            raise UserError(f"trainer.max_tokens={self.max_tokens} makes fewer batches than there are processes")
        return batches[:usable]

    def __iter__(self):
        return self

    def __next__(self):
        if self._batches is None or self.position >= self._end:
            epoch = self._epoch + 1 if self._epoch is not None else 0
            if self._epoch is None:  # find the epoch holding `position` (after a resume)
                start = 0
                while True:
                    batches = self._epoch_batches(epoch)
                    if self.position < start + len(batches) // self.world_size:
                        break
                    start += len(batches) // self.world_size
                    epoch += 1
            else:
                start, batches = self._end, self._epoch_batches(epoch)
            self._epoch, self._batches, self._start = epoch, batches, start
            self._end = start + len(batches) // self.world_size
        step_in_epoch = self.position - self._start
        self.position += 1
        return self._batches[step_in_epoch * self.world_size + self.rank]


class StopRequest:
    """Ctrl-C or SIGTERM asks the loop to finish its step, save a checkpoint and stop; a second Ctrl-C stops now."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
              f"(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)


def train(model, optimizer, scheduler, scaler, train_data, batches, settings, device, autocast, tracker,
          on_eval, on_checkpoint, start_step=0, stop=None, dist=None, step_flops=None, peak_flops=None):
    """Teacher-forced training up to settings.max_steps; returns the last step done (less if stopped).

    `on_eval(step)` evaluates and checkpoints, `on_checkpoint(step)` only checkpoints. The only host
    synchronisations are at log, evaluation and checkpoint steps (and every step with on_nonfinite=skip).
    `step_flops(B, S, T)` (model FLOPs of a step) and `peak_flops` (this device's FLOP/s) give perf/mfu.
    """
    dist = dist or Dist()
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum = torch.zeros((), device=device)  # summed on the device; read back only every log_every steps
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # the first step whose loss was not finite
    tokens, real_tokens, padded_tokens, window, skipped, t0 = 0, 0, 0, 0, 0, time.perf_counter()
    flops = 0  # model FLOPs of this process's steps in the log window
    bar = tqdm(total=settings.max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
               disable=not dist.is_main)

    def check_finite():
        bad = int(first_bad)
        if bad >= 0:
            lr = scheduler.base_lrs[0] * scheduler.lr_lambdas[0](bad - 1)
            raise UserError(f"train/loss is not finite at step {bad} (lr {lr:.3g}): lower optimizer.lr, raise "
                            f"scheduler.warmup_steps, or set trainer.on_nonfinite=skip to skip such steps")

    def stop_requested(step):
        wanted = stop is not None and stop.signal is not None
        if not dist.enabled:
            return wanted
        if step % settings.log_every:  # every process must stop at the same step: agree at log steps
            return False
        votes = sum_across(dist, torch.tensor(float(wanted), device=device))  # on the GPU for NCCL
        return bool(votes > 0)

    model.train()
    step = start_step
    for step in range(start_step + 1, settings.max_steps + 1):
        rows = next(batches)
        src, tgt = train_data.batch(rows)  # an index into tensors padded once at load: no loader workers needed
        if device.type == "cuda":  # page-locked, so that the copies run asynchronously to the GPU's work
            src, tgt = src.pin_memory(), tgt.pin_memory()
        src, tgt = src.to(device, non_blocking=True), tgt.to(device, non_blocking=True)
        tgt_real = int(train_data.tgt_lengths[rows].sum())  # lengths live on the host: no device sync
        real_tokens += int(train_data.src_lengths[rows].sum()) + tgt_real
        padded_tokens += src.numel() + tgt.numel()
        tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]  # (B, T): the decoder reads BOS y1.., predicts y1.. EOS
        if step_flops is not None:
            flops += step_flops(src.size(0), src.size(1), tgt_in.size(1))
        with autocast():
            logits = model(src, tgt_in)  # (B, T, V)
        loss = sequence_loss(logits, tgt_out, settings.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        if settings.on_nonfinite == "skip":
            finite = sum_across(dist, torch.isfinite(loss).float()) == dist.world_size  # a host sync per step
            if not finite:
                skipped += 1
                tracker.scalars({"train/skipped_steps": skipped}, step)
                bar.update(1)
                continue
        else:
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
        scaler.scale(loss).backward()
        if settings.grad_clip > 0:
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += loss.detach()
        window += 1
        tokens += tgt_real - len(rows)  # real target tokens (tgt_out has one fewer per row)
        bar.update(1)
        if step % settings.log_every == 0 or step == settings.max_steps:
            check_finite()
            sum_across(dist, loss_sum)
            loss_value = loss_sum.item()  # waits for the device: the window's work is done before it is timed
            elapsed = time.perf_counter() - t0
            values = {"train/loss": loss_value / max(window, 1) / dist.world_size, "train/lr": scheduler.get_last_lr()[0],
                      "train/padding_fraction": 1 - real_tokens / padded_tokens,
                      "perf/tokens_per_sec": tokens * dist.world_size / elapsed}  # real target tokens, all processes
            if step_flops is not None and peak_flops:
                values["perf/mfu"] = flops / elapsed / peak_flops  # this process on its device
            if settings.grad_clip > 0:
                values["train/grad_norm"] = grad_norm.item()
            tracker.scalars(values, step)
            bar.set_postfix(loss=f"{values['train/loss']:.3f}", lr=f"{values['train/lr']:.2e}")
            loss_sum.zero_()
            tokens, real_tokens, padded_tokens, window, flops, t0 = 0, 0, 0, 0, 0, time.perf_counter()
        if step % settings.eval_every == 0 or step == settings.max_steps:
            check_finite()
            paused = time.perf_counter()
            on_eval(step)
            bar.refresh()
            t0 += time.perf_counter() - paused  # evaluation time is not training throughput
        elif settings.checkpoint_every and step % settings.checkpoint_every == 0:
            check_finite()
            on_checkpoint(step)
        if stop_requested(step):
            check_finite()
            if step % settings.eval_every:  # an evaluation step has just saved
                on_checkpoint(step)
            break
    bar.close()
    return step
