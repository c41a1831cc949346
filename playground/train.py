"""The training loop, and what it reads its batches and stop requests from.

`train` is one function a reader follows top to bottom: get a batch, forward under autocast, loss, backward,
clip, step, and every so often log, evaluate or checkpoint (calls out of the loop). What it trains with (the
model, optimiser, schedule, loss, device) arrives built, as a `Training` (experiment.py builds it with
setup.py); it never reads the config tree.
"""

import contextlib
import datetime
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .data.batching import token_budget_batches
from .distributed import Dist, sum_across
from .errors import UserError

log = logging.getLogger(__name__)
PROGRESS = ("auto", "bar", "log", "off")


@dataclass
class Training:
    """What the loop trains with."""

    model: torch.nn.Module  # what is called: the model itself, or it under DistributedDataParallel / torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # scales fp16 losses; a no-op otherwise
    loss_fn: Callable  # (logits (B, T, V), tgt_out (B, T), label_smoothing, pad_id) -> the mean loss
    pad_id: int
    device: torch.device
    autocast: Callable = contextlib.nullcontext  # () -> the autocast context of trainer.precision
    dist: Dist = field(default_factory=Dist)
    step_flops: Optional[Callable] = None  # (B, S, T) -> model FLOPs of one step, for perf/mfu
    peak_flops: Optional[float] = None  # this device's matrix-product FLOP/s, for perf/mfu


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
        self.shards = self._batches[step_in_epoch * self.world_size:(step_in_epoch + 1) * self.world_size]
        return self.shards[self.rank]  # shards: every process's rows of this batch, for the global token count


def carried_position(data, position, saved: tuple, now: tuple) -> int:
    """The data position, in this run's steps, of a checkpoint written by another number of processes
    (trainer.resume_override): the same epoch, and in it as many per-process batches done as the checkpoint's run
    had done, rounded down to a whole step (a step's worth at most is seen again, none is skipped). saved and now
    are (seed, batch_size, max_tokens, world_size), the checkpoint's and this run's."""
    (seed, batch_size, max_tokens, world), (new_seed, new_batch_size, new_max_tokens, new_world) = saved, now
    old = BatchStream(data, batch_size, seed, world, position=position, max_tokens=max_tokens)
    next(old)  # finds the epoch holding `position`
    done = (position - old._start) * world  # per-process batches of that epoch
    new = BatchStream(data, new_batch_size, new_seed, new_world, max_tokens=new_max_tokens)
    start = sum(len(new._epoch_batches(epoch)) // new_world for epoch in range(old._epoch))
    return start + done // new_world


VALID_METRICS = ("loss", "nll", "ppl", "token_accuracy", "exact_match", "bleu", "chrf", "cer", "wer")
LOWER_IS_BETTER = ("loss", "nll", "ppl", "cer", "wer")
MONITOR_MODES = ("max", "min")


def resolve_monitor(metric, mode, text_data: bool) -> tuple[str, str]:
    """trainer.monitor and trainer.monitor_mode, defaults filled in: BLEU on text data (exact match stays near 0
    there), exact match on the synthetic tasks; min for losses and error rates, max for the rest."""
    metric = metric or ("valid/bleu" if text_data else "valid/exact_match")
    name = metric.removeprefix("valid/")
    if not metric.startswith("valid/") or name not in VALID_METRICS:
        raise UserError(f"trainer.monitor={metric} is not a metric of the validation runs: one of "
                        f"{', '.join('valid/' + m for m in VALID_METRICS)}")
    mode = mode or ("min" if name in LOWER_IS_BETTER else "max")
    if mode not in MONITOR_MODES:
        raise UserError(f"trainer.monitor_mode={mode} is not one of: {', '.join(MONITOR_MODES)}")
    return metric, mode


class Monitor:
    """The metric that picks the best evaluation (best.pt) and, with patience, ends a run that stopped improving.

    Strictly better only: a tie keeps the earlier weights. A NaN is never better.
    """

    def __init__(self, metric: str, mode: str, patience: int = 0):
        self.metric, self.mode, self.patience = metric, mode, patience
        self.best, self.best_step, self.evals_since_best = None, None, 0

    def better(self, value: float) -> bool:
        if value != value:  # NaN
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def update(self, metrics: dict, step: int) -> bool:
        """Record one evaluation's `split/metric` values; return whether it is the best so far."""
        value = metrics[self.metric]
        if self.better(value):
            self.best, self.best_step, self.evals_since_best = value, step, 0
            return True
        self.evals_since_best += 1
        return False

    @property
    def exhausted(self) -> bool:
        """patience evaluations in a row without improvement (never with patience 0)."""
        return self.patience > 0 and self.evals_since_best >= self.patience

    def reason(self) -> str:
        return (f"early stop: {self.metric} has not improved on {self.best:.4f} (step {self.best_step}) for "
                f"{self.evals_since_best} evaluation{'s' * (self.evals_since_best != 1)} "
                f"(trainer.patience={self.patience})")

    def state_dict(self) -> dict:
        return {"metric": self.metric, "mode": self.mode, "best": self.best, "best_step": self.best_step,
                "evals_since_best": self.evals_since_best}

    def load_state_dict(self, state: dict) -> None:
        """Continue a checkpoint's count; a checkpoint that monitored another metric gives only its best step."""
        if state.get("metric") == self.metric and state.get("mode") == self.mode:
            self.best, self.best_step = state["best"], state["best_step"]
            self.evals_since_best = state["evals_since_best"]


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR2") if hasattr(signal, name))


class StopRequest:
    """Ctrl-C, SIGTERM or SIGUSR2 (the warning a SLURM job launched by submitit gets before its time is up) asks
    the loop to finish its step, save a checkpoint and stop; a second Ctrl-C stops now."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
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


def train(run: Training, settings, data, batches, tracker, on_eval, on_checkpoint, start_step=0, stop=None,
          on_log=None, window=None) -> int:
    """Teacher-forced training from start_step to settings.max_steps; returns the last step done (less if stopped).

    `data` is the training split (TokenPairs), `batches` yields its rows batch by batch (BatchStream); a step
    takes settings.accumulate of them. `on_eval(step)` evaluates and checkpoints, and returns True to end the
    run there (early stopping); `on_checkpoint(step)` only checkpoints; `on_log(step, train_loss, grad_norms)` sees
    each log step's mean loss and every step's gradient norm since the last (the run doctor). `window` is the
    LogWindow the train/* scalars come from (a resumed run's holds the steps its checkpoint had not logged yet). The
    only host synchronisations are at log, evaluation and checkpoint steps (and every step with on_nonfinite=skip).
    """
    model, optimizer, scheduler, scaler = run.model, run.optimizer, run.scheduler, run.scaler
    window, nonfinite = window or LogWindow(run, start_step), NonFinite(run, settings.on_nonfinite)
    accumulate = settings.accumulate
    model.train()
    step = start_step
    with Progress(settings.progress, settings.max_steps, start_step, run.dist.is_main) as progress:
        for step in range(start_step + 1, settings.max_steps + 1):
            optimizer.zero_grad(set_to_none=True)
            micro, shards = [], []
            for _ in range(accumulate):
                micro.append(next(batches))
                shards += batches.shards
            # the loss of a step is the mean over every target token of its batches in every process: each
            # batch's mean, weighted by its share of those tokens (counted from lengths kept on the host: no device
            # sync), times the number of processes, whose gradients DDP averages
            total = sum(_target_tokens(data, rows) for rows in shards)  # every process's, for the throughput too
            window.tokens += total
            weights = None
            if accumulate > 1 or run.dist.world_size > 1:
                weights = [_target_tokens(data, rows) * run.dist.world_size / total for rows in micro]
            loss = None
            for i, rows in enumerate(micro):
                src, tgt = _to_device(data.batch(rows), run.device)  # padded here, to this batch's longest row
                tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]  # (B, T): the decoder reads BOS y1.., predicts y1.. EOS
                # DDP averages across processes once, at the last batch of the step
                with _gradients_stay_local(model, i < accumulate - 1):
                    with run.autocast():
                        logits = model(src, tgt_in)  # (B, T, V)
                    part = run.loss_fn(logits, tgt_out, settings.label_smoothing, run.pad_id)
                    del logits  # (B, T, V): the loss keeps what its backward needs; free the rest before it runs
                    if weights:
                        part = part * weights[i]
                    scaler.scale(part).backward()
                loss = part.detach() if loss is None else loss + part.detach()
                window.count(data, rows, src, tgt_in)
            grad_norm = _clip_gradients(run, settings.grad_clip)
            if nonfinite.skip(loss, grad_norm, step):  # on_nonfinite=skip: no update, but the step's evaluation,
                tracker.scalars({"train/skipped_steps": nonfinite.skipped}, step)  # checkpoint and stop check happen
                # fp16: the gradients were unscaled; an overflow lowers the scale, as GradScaler's skips do
                scaler.update()
                grad_norm = None
            else:
                scaler.step(optimizer)
                scaler.update()
                window.add(loss, grad_norm)  # before the schedule moves on: train/lr is the rate this step used
                scheduler.step()
            progress.bar.update(1)
            last = step == settings.max_steps
            if step % settings.log_every == 0 or last:
                nonfinite.check()
                values = window.report(grad_norm, step)
                tracker.scalars(values, step)
                if on_log is not None:
                    on_log(step, values["train/loss"], window.step_norms)
                progress.log(step, values)
            if step % settings.eval_every == 0 or last:
                nonfinite.check()
                with window.paused():  # evaluation time is not training throughput
                    ended = on_eval(step)
                progress.bar.refresh()
                if ended:
                    break
            elif settings.checkpoint_every and step % settings.checkpoint_every == 0:
                nonfinite.check()
                on_checkpoint(step)
            if _stop_requested(run.dist, stop, step, settings.log_every, run.device):
                nonfinite.check()
                if step % settings.eval_every:  # an evaluation step has just saved
                    on_checkpoint(step)
                break
    return step


class Progress:
    """trainer.progress: `bar`, a tqdm bar (log lines are written above it, never through it); `log`, a plain log
    line every log_every steps, for logs that are files (no carriage returns); `auto`, the bar on a terminal and the
    lines elsewhere; `off`, neither. Only the main process shows progress."""

    def __init__(self, mode: str, max_steps: int, start_step: int, is_main: bool):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode if is_main else "off"
        self.max_steps, self.start_step, self.start = max_steps, start_step, time.perf_counter()
        self.bar = tqdm(total=max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                        disable=self.mode != "bar")
        self.redirect = logging_redirect_tqdm() if self.mode == "bar" else contextlib.nullcontext()

    def __enter__(self):
        self.redirect.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.close()
        self.redirect.__exit__(*exc)

    def log(self, step: int, values: dict) -> None:
        """At a log step: the bar's loss and lr, or one line with the throughput and the time left."""
        if self.mode == "bar":
            self.bar.set_postfix(loss=f"{values['train/loss']:.3f}", lr=f"{values['train/lr']:.2e}")
        elif self.mode == "log":
            elapsed = time.perf_counter() - self.start
            left = elapsed / max(step - self.start_step, 1) * (self.max_steps - step)
            log.info(f"step {step}/{self.max_steps}: train/loss {values['train/loss']:.4f}, "
                     f"lr {values['train/lr']:.2e}, {values['perf/tokens_per_sec']:,.0f} tokens/s, "
                     f"ETA {datetime.timedelta(seconds=round(left))}")


def _target_tokens(data, rows) -> int:
    """The target tokens the loss counts in these rows (BOS is input only), from the lengths on the host."""
    return int(data.tgt_lengths[rows].sum()) - len(rows)


def _gradients_stay_local(model, local: bool):
    """Under DistributedDataParallel, skip the gradient all-reduce of a backward pass (all but the last batch of
    an accumulated step: the sum is averaged once); otherwise nothing."""
    no_sync = getattr(model, "no_sync", None)
    return no_sync() if local and no_sync is not None else contextlib.nullcontext()


def _to_device(batch, device):
    src, tgt = batch
    if device.type == "cuda":  # page-locked, so that the copies run asynchronously to the GPU's work
        src, tgt = src.pin_memory(), tgt.pin_memory()
    return src.to(device, non_blocking=True), tgt.to(device, non_blocking=True)


def _clip_gradients(run: Training, max_norm: float):
    """Clip the global gradient norm to max_norm (0: off); returns the norm before clipping, a device tensor, or None."""
    if max_norm <= 0:
        return None
    run.scaler.unscale_(run.optimizer)
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def _gradient_norm(run: Training):
    """The global gradient norm, unscaled (fp16), without clipping: a device tensor."""
    run.scaler.unscale_(run.optimizer)
    return torch.nn.utils.get_total_norm([p.grad for group in run.optimizer.param_groups for p in group["params"]
                                          if p.grad is not None])


def _stop_requested(dist: Dist, stop, step: int, log_every: int, device) -> bool:
    """Whether Ctrl-C or SIGTERM asked to stop; several processes agree to stop together, at every step on the CPU
    and at log steps on a GPU."""
    wanted = stop is not None and stop.signal is not None
    if not dist.enabled:
        return wanted
    # torchrun kills its workers 30 s after Ctrl-C, which 50 steps of a large model on a CPU outlast: there the
    # processes ask each other every step (one number through gloo, microseconds beside a step); on a GPU reading the
    # answer would hold the host at every step
    if torch.device(device).type != "cpu" and step % log_every:
        return False
    return bool(sum_across(dist, torch.tensor(float(wanted), device=device)) > 0)  # on the GPU for NCCL


class LogWindow:
    """The loss (summed on the device), tokens, FLOPs and time since the last log step (`after`): train/* and perf/*
    scalars."""

    def __init__(self, run: Training, after: int = 0):
        self.run, self.after = run, after
        self.loss_sum = torch.zeros((), device=run.device)  # read back only at log steps
        self.lr = run.optimizer.param_groups[0]["lr"]  # the rate of the last step counted (or of the next, none yet)
        self._reset()

    def state_dict(self) -> dict:
        """The steps since the last log step and their summed loss (every process's): a checkpoint keeps them, so that
        a run resumed from it logs at its next log step the mean the uninterrupted run logs there."""
        total = sum_across(self.run.dist, self.loss_sum.clone()).item() / self.run.dist.world_size
        return {"after": self.after, "steps": self.steps, "loss_sum": total}

    def load_state_dict(self, state: dict, log_every: int) -> None:
        """Continue a checkpoint's window: only where its last log step is this run's last one (trainer.log_every may
        have changed); the first process holds its sum."""
        if state and state["steps"] and state["after"] == self.after - self.after % log_every:
            self.after, self.steps = state["after"], state["steps"]
            if self.run.dist.is_main:
                self.loss_sum.fill_(state["loss_sum"] * self.run.dist.world_size)

    def _reset(self):
        self.loss_sum.zero_()
        self.steps, self.tokens, self.real, self.padded, self.flops = 0, 0, 0, 0, 0
        self.norms = []  # each step's gradient norm, on the device until the log step
        self.start = time.perf_counter()

    def add(self, loss, grad_norm=None):
        """Count one step of the given loss and gradient norm (device tensors: no sync), and the learning rate it
        used (called before the schedule's step)."""
        self.loss_sum += loss.detach()
        self.lr = self.run.optimizer.param_groups[0]["lr"]
        self.steps += 1
        if grad_norm is not None:
            self.norms.append(grad_norm.detach().float())

    def count(self, data, rows, src, tgt_in):
        """Count one batch's padding and FLOPs (the real target tokens of every process are added to `tokens` by the
        loop); token counts come from lengths kept on the host: no device sync."""
        tgt_real = int(data.tgt_lengths[rows].sum())
        self.real += int(data.src_lengths[rows].sum()) + tgt_real
        self.padded += src.numel() + tgt_in.numel() + len(rows)
        if self.run.step_flops is not None:
            self.flops += self.run.step_flops(src.size(0), src.size(1), tgt_in.size(1))

    @contextlib.contextmanager
    def paused(self):
        paused = time.perf_counter()
        yield
        self.start += time.perf_counter() - paused

    def report(self, grad_norm, step: int) -> dict:
        """The window's scalars (this waits for the device: its work is done before it is timed); starts a new one
        after `step`."""
        run, world = self.run, self.run.dist.world_size
        sum_across(run.dist, self.loss_sum)
        loss = self.loss_sum.item()
        elapsed = time.perf_counter() - self.start
        values = {"train/loss": loss / max(self.steps, 1) / world, "train/lr": self.lr,
                  "train/padding_fraction": 1 - self.real / max(self.padded, 1),
                  "perf/tokens_per_sec": self.tokens / elapsed}  # real target tokens, all processes
        if run.step_flops is not None and run.peak_flops:
            values["perf/mfu"] = self.flops / elapsed / run.peak_flops  # this process on its device
        if grad_norm is not None:
            values["train/grad_norm"] = grad_norm.item()
        self.step_norms = torch.stack(self.norms).tolist() if self.norms else []  # for the run doctor
        self._reset()
        self.after = step
        return values


class NonFinite:
    """trainer.on_nonfinite: stop (remember the first bad step on the device; raise at the next check) or skip."""

    def __init__(self, run: Training, mode: str):
        self.run, self.mode, self.skipped = run, mode, 0
        self.first_bad = torch.full((), -1, dtype=torch.long, device=run.device)

    def skip(self, loss, grad_norm, step: int) -> bool:
        """Whether to skip this step's update: only with on_nonfinite=skip (which waits for the device every
        step), when the loss or any gradient is not finite on any process (all of them skip together)."""
        if self.mode != "skip":
            self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss.detach()), step, self.first_bad)
            return False
        if grad_norm is None:  # trainer.grad_clip=0: the norm was not needed for clipping
            grad_norm = _gradient_norm(self.run)
        finite = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
        finite = sum_across(self.run.dist, finite.float()) == self.run.dist.world_size
        self.skipped += int(not finite)
        return not finite

    def check(self) -> None:
        bad = int(self.first_bad)
        if bad >= 0:
            scheduler = self.run.scheduler
            lr = scheduler.base_lrs[0] * scheduler.lr_lambdas[0](bad - 1)
            raise UserError(f"train/loss is not finite at step {bad} (lr {lr:.3g}): lower optimizer.lr, warm up "
                            f"longer (scheduler.warmup_steps, with scheduler=noam or cosine), or set "
                            f"trainer.on_nonfinite=skip to skip such steps")
