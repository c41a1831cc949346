"""Everything a run needs before its loop starts: device, precision, torch.compile, optimiser and schedule.

Each turns a config value into an object and refuses a value that makes no sense here with a UserError
naming the key. experiment.py calls these, then hands what they built to the loop in train.py.
"""

import contextlib
import math
import os
import shutil
import sys

import torch

from .config import OptimizerConfig, SchedulerConfig
from .errors import UserError


ONEDNN_CACHE = 16  # oneDNN primitives a CPU process keeps for reuse (oneDNN's own default is 1,024)


def bound_onednn_cache() -> None:
    """Keep few oneDNN primitives. On a CPU, bf16 matrix products (and the fast kernels' linear) run through
    oneDNN, which builds a primitive for each shape and by default keeps the last 1,024. Token-budget batches come
    in hundreds of shapes, and the kept primitives (with the heap they fragment) took a bf16 model=small training
    process to a 1.6 GB peak in 60 steps, against 1.3 GB with 16 kept, with no speed difference we could measure
    (docs/performance.md). oneDNN reads the setting at its first primitive, so this runs before any computation,
    and a value exported by the user is kept."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE))


def available_devices() -> dict:
    """Each device type the playground runs on, and whether this machine and torch build have it."""
    return {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}


def resolve_device(name: str) -> torch.device:
    """trainer.device: auto picks cuda, then mps, then cpu; an explicit device must exist on this machine."""
    available = available_devices()
    if name == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if available[d]))
    if name not in available:
        raise UserError(f"trainer.device={name} is not one of: {', '.join(DEVICES)}")
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


def maybe_compile(model, enabled: bool, device: torch.device, warn=print, inform=print):
    """trainer.compile: the model under torch.compile (inform says the first steps wait for it), or, where it cannot
    be compiled, the model itself and a warning.

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
    inform("trainer.compile=true: the first steps compile the model and wait for it (about a minute on a CPU)")
    return torch.compile(model)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda", "mps")
OPTIMIZERS = ("adam", "adamw", "sgd")
OPTIMIZER_CLASSES = {torch.optim.Adam: "adam", torch.optim.AdamW: "adamw", torch.optim.SGD: "sgd"}  # class -> name


NO_BF16_UNITS = "this CPU has no bf16 units (no AVX512-BF16 or AMX)"


def _onednn_bf16_missing():
    """Why torch does not multiply bf16 matrices on this CPU through oneDNN (it then emulates them), or None: oneDNN
    is off (torch.backends.mkldnn.enabled), or held below the CPU's bf16 instructions (ONEDNN_MAX_CPU_ISA)."""
    if not torch.backends.mkldnn.is_available():
        return "this torch has no oneDNN"
    if not torch.backends.mkldnn.enabled:
        return "torch.backends.mkldnn.enabled is False"
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # oneDNN's own answer, ISA limit included
    if probe is not None and not probe():
        limit = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
        return (f"ONEDNN_MAX_CPU_ISA={limit} holds oneDNN below them" if limit
                else "this torch's oneDNN does not use them")
    return None


def cpu_bf16_missing():
    """Why this CPU does not multiply bf16 matrices natively, in words, or None where it does (AVX512-BF16 or AMX,
    used through oneDNN)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if not any(getattr(torch.cpu, probe, lambda: False)() for probe in probes):
        return NO_BF16_UNITS
    if reason := _onednn_bf16_missing():
        return f"this CPU's bf16 units are not used ({reason})"
    return None


def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX) rather than emulating them."""
    return cpu_bf16_missing() is None


def resolve_precision(device: torch.device, precision: str) -> str:
    """trainer.precision: auto is bf16 where the hardware computes in it natively (a CUDA GPU with bf16, a CPU
    with AVX512-BF16 or AMX: 2x to 6x the fp32 matrix throughput) and fp32 elsewhere. bf16 asked for by name on
    a CPU without bf16 units (or whose units oneDNN does not use) is refused: emulated, it multiplies some 20x slower
    than fp32 (AVX2: 0.85 against 18 GFLOP/s), and oneDNN refuses some of its operations there."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"  # not V100/T4
        return "bf16" if device.type == "cpu" and cpu_computes_bf16() else "fp32"
    if precision == "bf16" and device.type == "cpu" and not cpu_computes_bf16():
        raise UserError(f"trainer.precision=bf16 but {cpu_bf16_missing() or NO_BF16_UNITS}: emulated, "
                        f"bf16 would train many times slower than fp32 here (use trainer.precision=fp32 or auto)")
    return precision


def autocast_for(device: torch.device, precision: str):
    """A function returning the autocast context for trainer.precision (a no-op context for fp32)."""
    precision = resolve_precision(device, precision)
    if precision not in PRECISIONS:
        raise UserError(f"trainer.precision={precision} is not one of: auto, {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    if precision == "fp16" and device.type != "cuda":
        # bf16 is the half precision of CPUs and Apple GPUs, but only a CPU with bf16 units computes it natively
        native = device.type != "cpu" or cpu_computes_bf16()
        instead = "bf16" if native else f"fp32: {cpu_bf16_missing() or NO_BF16_UNITS}"
        raise UserError(f"trainer.precision=fp16 needs trainer.device=cuda (on {device.type}, use {instead})")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("trainer.precision=bf16 but this GPU has no bf16 support (use fp16)")
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


SGD_LR_UNSET = ("optimizer.lr is not set, and the automatic one is for Adam: give optimizer=sgd a learning rate "
                "(optimizer.lr=0.1)")


def check_optimizer(opt_cfg, resuming: bool = False) -> None:
    """The optimizer values torch would refuse with a traceback (or take, and diverge), each refused in one line
    naming the key: before any data is read, and for every job of a sweep. resuming: optimizer.lr=null takes the
    checkpoint's rate, whatever the optimizer."""
    if opt_cfg.lr is None and opt_cfg.name == "sgd" and not resuming:
        raise UserError(SGD_LR_UNSET)
    if opt_cfg.lr is not None and opt_cfg.lr <= 0:  # null: chosen from model.d_model (Adam's only)
        auto = " (or null: 2e-3 * sqrt(128 / model.d_model))" if opt_cfg.name != "sgd" else ""
        raise UserError(f"optimizer.lr={opt_cfg.lr} must be positive{auto}")
    if opt_cfg.name in ("adam", "adamw"):
        if len(opt_cfg.betas) != 2 or not all(0 <= b < 1 for b in opt_cfg.betas):
            raise UserError(f"optimizer.betas={list(opt_cfg.betas)} must be two numbers in [0, 1)")
        if not opt_cfg.eps > 0:
            raise UserError(f"optimizer.eps={opt_cfg.eps} must be positive (the paper's: 1e-9)")
    if opt_cfg.weight_decay < 0:
        raise UserError(f"optimizer.weight_decay={opt_cfg.weight_decay} must be 0 (none) or positive")
    if opt_cfg.name == "sgd" and opt_cfg.momentum < 0:
        raise UserError(f"optimizer.momentum={opt_cfg.momentum} must be 0 (none) or positive")
    if opt_cfg.name == "sgd" and opt_cfg.momentum >= 1:  # as Adam's betas: 1 or more, the velocity never decays
        raise UserError(f"optimizer.momentum={opt_cfg.momentum} must be below 1 (0.9 is usual): at 1 or more every "
                        f"past gradient keeps its whole weight in each update, which grows without bound")


def check_unused_settings(opt_cfg, sched_cfg) -> None:
    """A setting the chosen optimizer or schedule does not read (momentum for Adam, warmup for the constant
    schedule), given a value other than the schema's default, is refused rather than ignored."""
    unused = []
    if opt_cfg.name != "sgd" and opt_cfg.momentum != OptimizerConfig.momentum:
        unused.append((f"optimizer.momentum={opt_cfg.momentum}", f"optimizer={opt_cfg.name}", "optimizer=sgd"))
    if opt_cfg.name == "sgd" and list(opt_cfg.betas) != OptimizerConfig().betas:
        unused.append((f"optimizer.betas={list(opt_cfg.betas)}", "optimizer=sgd", "optimizer=adam or adamw"))
    if opt_cfg.name == "sgd" and opt_cfg.eps != OptimizerConfig.eps:
        unused.append((f"optimizer.eps={opt_cfg.eps}", "optimizer=sgd", "optimizer=adam or adamw"))
    if sched_cfg.name == "constant" and sched_cfg.warmup_steps:
        unused.append((f"scheduler.warmup_steps={sched_cfg.warmup_steps}", "scheduler=constant",
                       "scheduler=noam or cosine"))
    if sched_cfg.name != "cosine" and sched_cfg.min_lr_ratio != SchedulerConfig.min_lr_ratio:
        unused.append((f"scheduler.min_lr_ratio={sched_cfg.min_lr_ratio}", f"scheduler={sched_cfg.name}",
                       "scheduler=cosine"))
    if unused:
        setting, chosen, users = unused[0]
        raise UserError(f"{setting}: {chosen} does not use it (it is for {users}): remove it, or choose {users}")


def check_scheduler(sched_cfg) -> None:
    """The schedule values a type cannot check, each refused in one line naming the key."""
    if sched_cfg.warmup_steps is not None and sched_cfg.warmup_steps < 0:
        raise UserError(f"scheduler.warmup_steps={sched_cfg.warmup_steps} must be 0 (no warmup) or positive")
    if not 0 <= sched_cfg.min_lr_ratio <= 1:
        raise UserError(f"scheduler.min_lr_ratio={sched_cfg.min_lr_ratio} must be in [0, 1] (a fraction of the peak)")


def build_optimizer(opt_cfg, params, device: torch.device) -> torch.optim.Optimizer:
    """optimizer.name: adam (the paper's, Section 5.3), adamw or sgd; Adam is one fused kernel, not a loop per tensor.

    torch has fused Adam on the CPU and CUDA: on the CPU it is 4x faster than the default per-tensor loop and 6x
    faster than foreach, which allocates a temporary per tensor and step (78M parameters: 24 vs 97 vs 157 ms).
    """
    if opt_cfg.lr is None:  # null is filled in by resolve_recipe first
        raise UserError("optimizer.lr=null must be a positive number here")
    check_optimizer(opt_cfg)
    fused = device.type in ("cpu", "cuda")
    if opt_cfg.name in ("adam", "adamw"):
        cls = torch.optim.Adam if opt_cfg.name == "adam" else torch.optim.AdamW
        return cls(params, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps,
                   weight_decay=opt_cfg.weight_decay, fused=fused, foreach=None if fused else True)
    if opt_cfg.name == "sgd":
        return torch.optim.SGD(params, lr=opt_cfg.lr, momentum=opt_cfg.momentum, weight_decay=opt_cfg.weight_decay)
    raise UserError(f"optimizer.name={opt_cfg.name} is not one of: {', '.join(OPTIMIZERS)}")


TINY_LR, TINY_D_MODEL = 2e-3, 128  # the default experiment's tuned peak learning rate, and its model's width
PAPER_WARMUP = 4000  # Section 5.3


def auto_lr(d_model: int) -> float:
    """optimizer.lr=null: the tiny model's 2e-3, scaled by d_model^-0.5 as the paper's schedule scales it
    (Section 5.3: lrate = d_model^-0.5 * ...): d_model 256 gets 1.4e-3, 512 gets 1e-3, 1024 gets 7.1e-4."""
    return TINY_LR * math.sqrt(TINY_D_MODEL / d_model)


def auto_warmup(max_steps: int) -> int:
    """scheduler.warmup_steps=null: the first 2/15 of the run (67 of the default 500 steps), at most the
    paper's 4000 (reached by runs of 30,000 steps or more)."""
    return max(1, min(PAPER_WARMUP, round(max_steps / 7.5)))


def resolve_recipe(cfg, max_steps: int, saved: dict = None) -> str:
    """Fill in optimizer.lr and scheduler.warmup_steps left null (in place, so that checkpoints and the HParams
    tab record the values used); return the log line saying what the run trains with and where it came from.

    A resumed run keeps the values its checkpoint's run chose (`saved`: that config), so that raising
    trainer.max_steps to train further does not change the warmup already done."""
    lr, warmup = cfg.optimizer.lr, cfg.scheduler.warmup_steps
    resumed = saved is not None and (lr is None or warmup is None)
    if saved is not None:
        if lr is None:
            cfg.optimizer.lr = saved["optimizer"]["lr"]
        if warmup is None:
            cfg.scheduler.warmup_steps = saved["scheduler"]["warmup_steps"]
    if cfg.optimizer.lr is None:
        if cfg.optimizer.name == "sgd":
            raise UserError(SGD_LR_UNSET)
        cfg.optimizer.lr = auto_lr(cfg.model.d_model)
    if cfg.scheduler.warmup_steps is None:
        cfg.scheduler.warmup_steps = auto_warmup(max_steps) if cfg.scheduler.name != "constant" else 0
    lr_from = "optimizer.lr" if lr is not None else "the checkpoint's" if resumed else \
        f"automatic: {TINY_LR:g} * sqrt({TINY_D_MODEL} / d_model {cfg.model.d_model})"
    warmup_from = "scheduler.warmup_steps" if warmup is not None else "the checkpoint's" if resumed else \
        f"automatic: max_steps {max_steps} / 7.5, at most {PAPER_WARMUP}"
    line = f"optimizer: {cfg.optimizer.name}, peak lr {cfg.optimizer.lr:.3g} ({lr_from}); schedule: {cfg.scheduler.name}"
    if cfg.scheduler.name != "constant":
        line += f", warmup {cfg.scheduler.warmup_steps} steps ({warmup_from})"
    return line


def noam(step, warmup, max_steps, min_ratio):
    """Section 5.3: lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), here divided by its peak value
    d_model^-0.5 * warmup^-0.5 so that optimizer.lr is the peak (the paper's base model: lr = 7e-4, warmup 4000).
    Without warmup (warmup=0) only the decay is left: optimizer.lr / sqrt(step), the peak at step 1."""
    step = max(step, 1)
    if warmup == 0:
        return 1 / math.sqrt(step)
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
    if sched_cfg.warmup_steps is None:  # null is filled in by resolve_recipe first
        raise UserError("scheduler.warmup_steps=null must be 0 (no warmup) or a positive number here")
    check_scheduler(sched_cfg)
    fn = SCHEDULES[sched_cfg.name]
    warmup, min_ratio = sched_cfg.warmup_steps, sched_cfg.min_lr_ratio
    # LambdaLR counts from 0 before the first step; the paper's step_num counts from 1
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: fn(i + 1, warmup, max_steps, min_ratio))
