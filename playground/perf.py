"""Model FLOPs and the machine's matrix-multiply peak: what MFU (model FLOPs utilisation) is measured with.

MFU = FLOPs the model needs per second / FLOPs per second the hardware reaches on a large matrix product.
Only matrix products count (projections, feed-forward, attention scores and sums, the output layer);
the backward pass is twice the forward, so a training step is 3x the forward pass.
"""

import time

import torch

from .kernels.linear import matmul_t
from .setup import available_devices


def training_flops(d_model, d_ff, enc_layers, dec_layers, tgt_vocab, batch, src_len, tgt_len, qk_width=None) -> int:
    """Matrix-product FLOPs of one training step on a (batch, src_len) source and (batch, tgt_len) target.
    qk_width is the width of all heads' queries and keys together, heads x d_k (model.key_dim; default d_model)."""
    D, F, B, S, T = d_model, d_ff, batch, src_len, tgt_len
    K = qk_width or D
    encoder = enc_layers * (2 * B * S * (2 * D * K + 2 * D * D + 2 * D * F)  # Q, K; V, out; FFN
                            + 2 * B * S * S * (K + D))  # QK^T, AV
    decoder = dec_layers * (2 * B * T * (2 * D * K + 2 * D * D + 2 * D * F)  # self-attention Q, K; V, out; FFN
                            + 2 * B * T * (D * K + D * D) + 2 * B * S * (D * K + D * D)  # cross: Q, out; K, V of memory
                            + 2 * B * T * T * (K + D) + 2 * B * T * S * (K + D))  # self and cross QK^T, AV
    output = 2 * B * T * D * tgt_vocab
    return 3 * (encoder + decoder + output)


def bench_device(parser, name: str) -> torch.device:
    """A benchmark's --device, or one line and exit 2 (argparse's error) where torch or this machine has no such
    device."""
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device {name}: not a device torch knows (try cpu, cuda or mps)")
    if not available_devices().get(device.type, False):
        parser.error(f"--device {name}: this machine has no {device.type} device (try --device cpu)")
    return device


def synchronize(device):
    """Wait for the device's queued work, so that a clock read afterwards has seen it run."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """FLOP/s of a large square matrix product in dtype on device: the ceiling MFU is measured against.

    Takes at most about `seconds` on any machine: the matrices start at 256 x 256 and double (up to 2048 on
    a CPU, 8192 on a GPU) only while the next size still fits the time left, so a dtype the hardware
    emulates (bf16 on an AVX2 CPU: 20x slower than fp32) is measured on small matrices rather than for
    minutes. On the CPU the faster of torch's two libraries counts (MKL for `a @ b`, oneDNN as
    playground/kernels/linear.py uses it).
    """
    deadline = time.perf_counter() + seconds
    largest = 8192 if device.type == "cuda" else 2048
    g = torch.Generator(device).manual_seed(0)  # its own: a run's random stream is not disturbed by measuring
    n, best = 256, 0.0
    while True:
        a, b = (torch.randn(n, n, device=device, generator=g).to(dtype) for _ in range(2))
        onednn = device.type == "cpu" and torch.backends.mkldnn.enabled  # (switched off: the kernels do not use it)
        products = [lambda: a @ b] + ([lambda: matmul_t(a, b)] if onednn else [])  # a @ b^T: same FLOPs
        left = max(deadline - time.perf_counter(), 0.0)
        rates = [_rate(product, 2 * n**3, device, left / 4 / len(products)) for product in products]
        best = max(best, *rates)
        one_product_next = 8 * 2 * n**3 / max(rates)  # seconds a product of twice the size would take
        if n * 2 > largest or 4 * len(products) * one_product_next > deadline - time.perf_counter():
            break
        n *= 2
    return best


def _rate(product, flops: int, device, seconds: float) -> float:
    product()  # warm-up: kernels chosen, caches filled
    synchronize(device)
    calls, start = 0, time.perf_counter()
    while calls < 1 or time.perf_counter() - start < seconds:
        product()
        synchronize(device)
        calls += 1
    return flops * calls / (time.perf_counter() - start)
