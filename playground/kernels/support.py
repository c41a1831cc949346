"""What every fast kernel shares: the check that it works here, and the dtype its matrix products run in.

A kernel is only taken where it has shown, on this machine, device, dtype and torch build, that it computes
what the reference piece computes: each kernel file registers a small check with `@check(name, what)`, and
`works(name, device, dtype)` runs it once (a few milliseconds, on tiny tensors, without touching the
random streams) and remembers the answer. A kernel that fails its check, or raises (a CPU whose oneDNN has
no bf16 primitive, say), is left out with one log line, and that piece runs the reference code.
"""

import functools
import logging

import torch

log = logging.getLogger("playground.kernels")

CHECKS = {}  # name -> (what it is, in words; the check: fn(device, dtype) that raises if the kernel is wrong here)
DEVICES = {}  # name -> the device types a kernel is written for (None: any)


def check(name: str, what: str, devices=None):
    """Register fn(device, dtype) as the check of kernel `name`: it raises (AssertionError or anything) when the
    kernel does not compute what the reference piece computes on that device in that dtype. A kernel written for
    some device types only (devices=("cpu",)) is not used, checked or reported on any other."""
    def register(fn):
        CHECKS[name], DEVICES[name] = (what, fn), devices
        return fn
    return register


@functools.cache
def works(name: str, device_type: str, dtype: torch.dtype) -> bool:
    """Whether kernel `name` passed its check on this device type in this dtype; checked once, then remembered."""
    what, fn = CHECKS[name]
    if DEVICES.get(name) is not None and device_type not in DEVICES[name]:
        return False  # not written for this device: the reference piece runs, as it is meant to, and no log line
    device = torch.device(device_type)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad():
            torch.manual_seed(0)
            fn(device, dtype)
        return True
    except Exception as e:  # a wrong result or an error: either way this piece is not used here
        reason = next(iter(str(e).strip().splitlines()), "")[:200]
        log.warning(f"trainer.kernels=fast: {what} fails its check on {device_type} in {_name(dtype)} "
                    f"({type(e).__name__}: {reason}); that piece runs the reference code instead (if you edited "
                    f"playground/model/, this is expected: the check compares the kernel with your version)")
        return False


def check_all(device: torch.device, dtype: torch.dtype) -> dict:
    """Run the check of every kernel written for this device, in this dtype, now (at startup, so its log lines
    come first)."""
    return {name: works(name, device.type, dtype) for name in CHECKS
            if DEVICES.get(name) is None or device.type in DEVICES[name]}


def _name(dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def compute_dtype(x) -> torch.dtype:
    """The dtype x's matrix products run in: autocast's where it is on (as nn.Linear's would), else x's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def autocast_to(device: torch.device, dtype: torch.dtype):
    """The context a check runs in: autocast to dtype, or autocast off for fp32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def assert_close_in(dtype, actual, expected, what: str) -> None:
    """A check's comparison: to float rounding in fp32, to a few units of bf16/fp16 rounding otherwise."""
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=5e-2, atol=5e-2)
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a.float(), b.float(), **tol, msg=lambda m: f"{what}: {m.splitlines()[0]}")


def refuse_second_derivative() -> None:
    """A backward pass that autograd records (create_graph=True) would take a hand-written backward as the
    derivative's definition, and it has none of its own: say so instead of returning a wrong one."""
    if torch.is_grad_enabled():
        raise RuntimeError("the fused CPU training kernels (playground/kernels/) have no second derivative: "
                           "backward(create_graph=True) is not supported through them (use trainer.kernels=reference)")
