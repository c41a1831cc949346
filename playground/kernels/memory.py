"""Big temporaries that keep their memory from one training step to the next (CPU).

torch's CPU allocator gives every tensor's memory back to malloc when the tensor dies, and glibc serves a block
of 32 MB or more straight from the kernel, which zeroes each 4 kB page on its first touch. The training step's
logits and their gradient are such blocks (2,048 x 8,000 fp32 values, 65 MB, at the benchmark's d256), so each
step paid about 16,000 page faults for each of them: 47,000 faults and 0.17 s of system time a step in all.
Keeping every freed block in the process (glibc's MALLOC_MMAP_MAX_=0) removes them too, but for the whole
process: the peak resident memory of real training rose by a sixth (docs/performance.md, "Fresh memory").

`reused_empty(shape, dtype, device)` is torch.empty for the few kernels that make such tensors (the output of a
big linear layer while training, the blockwise loss's gradient): on the CPU, a tensor of BIG bytes or more is
carved from a buffer kept here, one that no live tensor shares. Whether one does is read from the buffer's
storage's reference count, which every tensor made from it (a view, a detach(), an autograd's saved copy)
holds once, so a tensor the caller keeps is never written over. A private torch function reads that count:
the check below shows, once, that it counts as expected; where it does not, every tensor is fresh.
"""

import math
import threading

import torch

from .support import check, works

BIG = 16 * 2**20  # bytes: below this, malloc's own heap keeps freed memory for reuse
KEEP = 2  # buffers kept: a step's logits and their gradient

_buffers = []  # uint8 CPU tensors, most recently used last
_lock = threading.Lock()


def _shared(buffer) -> bool:
    """Whether any tensor besides `buffer` itself uses its memory (the temporary storage object counts once)."""
    return torch._C._storage_Use_Count(buffer.untyped_storage()._cdata) > 2


def _size_class(nbytes: int) -> int:
    """nbytes rounded up to one of eight sizes per doubling: a slightly longer batch next step still fits."""
    step = max(1, 2 ** max(0, math.ceil(math.log2(nbytes)) - 3))
    return -(-nbytes // step) * step


def kept(shape, dtype: torch.dtype, device) -> bool:
    """Whether reused_empty gives a tensor of this shape, dtype and device memory kept here (else a fresh one)."""
    return (torch.device(device).type == "cpu" and math.prod(shape) * dtype.itemsize >= BIG
            and works("reused_memory", "cpu", torch.float32))


def reused_empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty(shape, dtype=dtype, device=device), except that a big CPU tensor reuses a buffer no live tensor
    shares: its memory is already the process's, so writing it costs no page faults."""
    if not kept(shape, dtype, device):
        return torch.empty(shape, dtype=dtype, device=device)
    nbytes = math.prod(shape) * dtype.itemsize
    with _lock:
        free = [b for b in _buffers if b.numel() >= nbytes and not _shared(b)]
        buffer = min(free, key=torch.Tensor.numel) if free else torch.empty(_size_class(nbytes), dtype=torch.uint8)
        _buffers[:] = [b for b in _buffers if b is not buffer] + [buffer]
        del _buffers[:-KEEP]  # the least recently used go (one still in use lives on with its user, then is freed)
        # a tensor of its own on the buffer's memory, not a view of it: a view returned from an autograd Function
        # could not be changed in place, where a fresh tensor can
        return torch.empty(0, dtype=dtype).set_(buffer.untyped_storage(), 0, shape)


def release_all() -> None:
    """Let go of every kept buffer (those in use are freed when their last tensor dies): FastTransformer.eval()."""
    with _lock:
        _buffers.clear()


@check("reused_memory", "the reuse of big temporaries' memory", devices=("cpu",))
def _check_reused_memory(device, dtype):
    buffer = torch.empty(64, dtype=torch.uint8)
    alone = _shared(buffer)
    view = buffer[:8].view(torch.float32)
    held = _shared(buffer)
    del view
    if alone or not held or _shared(buffer):
        raise RuntimeError("torch's storage reference count does not say which tensors share a buffer")
