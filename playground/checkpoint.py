"""Checkpoints: written atomically, read without running code (torch.load(weights_only=True))."""

import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from .errors import UserError


def atomic_write(path, write) -> None:
    """Replace `path` whole or not at all: `write(file)` fills a temporary file beside it, which is flushed to
    disk and renamed over `path`, and the folder's new entry is flushed too. A crash leaves the previous file; a
    failed write (disk full, no permission) removes the temporary file and is one line naming the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        tmp.unlink(missing_ok=True)
        # torch.save's RuntimeError ("unexpected pos 64 vs 0") was raised while handling the write's OSError: its reason
        cause = e if isinstance(e, OSError) else e.__context__ if isinstance(e.__context__, OSError) else None
        reason = cause.strerror if cause is not None and cause.strerror else str(e).splitlines()[0]
        kept = f"the previous {path.name} is unchanged" if path.exists() else "nothing was written"
        raise UserError(f"{path}: could not be written ({reason}); {kept}")
    except BaseException:  # Ctrl-C half-way: no temporary file left behind either
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk, where the system allows opening a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path, state: dict) -> None:
    """torch.save through atomic_write: a crash never leaves a half-written checkpoint."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by save_checkpoint; a missing or unreadable file is the user's error."""
    if not str(path).strip():  # ckpt_path= with nothing after it (Path("") would be the working folder)
        raise UserError("ckpt_path is empty: give a checkpoint file (a run's checkpoints/best.pt, say)")
    path = Path(path)
    if path.is_dir():  # a run directory, most likely: name its checkpoints
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        inside = [f"{folder / name} {use}" for name, use in (("best.pt", "to evaluate or translate"),
                                                             ("last.pt", "to resume")) if (folder / name).is_file()]
        listed = f" (in it: {', '.join(inside)})" if inside else ""
        raise UserError(f"ckpt_path={path} is a folder, not a checkpoint file{listed}")
    if not path.is_file():
        raise UserError(f"ckpt_path={path}: no such file")
    with open(path, "rb") as f:
        head = f.read(2)
    if head and head != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip archive (a pickle before torch 1.6)
        raise UserError(f"ckpt_path={path}: not a checkpoint of this project (not a file torch.save writes: a data "
                        f"or text file?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # another program's pickle, or one holding Python objects (never run here)
        raise UserError(f"ckpt_path={path}: not a checkpoint of this project (it is not plain tensors and values, "
                        f"and a checkpoint file is never allowed to run code)")
    except Exception as e:  # a truncated or empty file, a file that is not a checkpoint
        first_line = next(iter(str(e).splitlines()), "empty or truncated file")
        raise UserError(f"ckpt_path={path}: not a readable checkpoint, truncated or damaged ({type(e).__name__}: "
                        f"{first_line})")
    if not isinstance(state, dict) or not all(isinstance(state.get(key), dict) for key in ("model", "config")):
        raise UserError(f"ckpt_path={path}: not a Transformer Playground checkpoint (no model weights and config)")
    missing = [key for key in ("tokenizers", "step") if key not in state]  # every checkpoint written here has both
    if missing:
        raise UserError(f"ckpt_path={path}: not a complete Transformer Playground checkpoint "
                        f"(no {' and no '.join(missing)})")
    return state


def checkpoint_tokenizers(state: dict, path) -> tuple:
    """The source and target tokenizers a checkpoint carries; one that cannot be rebuilt is the file's fault."""
    from .data import tokenizer_from_dict  # here: the data package is not needed to read a checkpoint's weights

    try:
        return tuple(tokenizer_from_dict(state["tokenizers"][side]) for side in ("src", "tgt"))
    except Exception as e:  # a missing side or field, a tokenizer JSON that does not parse
        raise UserError(f"ckpt_path={path}: its tokenizers cannot be rebuilt ({type(e).__name__}: "
                        f"{next(iter(str(e).splitlines()), '')})") from None


def load_to_resume(path) -> dict:
    """load_checkpoint for resuming: where the file is there but unreadable, the message names the newest
    readable training checkpoint beside it (the step_N.pt kept by trainer.keep_last, best.pt) to resume from."""
    try:
        return load_checkpoint(path)
    except UserError as e:
        path = Path(path)
        if not path.is_file():
            raise
        readable = []
        for other in sorted(path.parent.glob("*.pt"), key=lambda p: (not p.name.startswith("step_"), p.name)):
            if other.resolve() != path.resolve():
                try:
                    state = load_checkpoint(other)
                except UserError:
                    continue
                if "optimizer" in state:  # a training state, not averaged weights
                    readable.append((state["step"], other))
        if not readable:
            raise UserError(f"{e}, and no readable training checkpoint is beside it") from None
        step, newest = max(readable, key=lambda found: found[0])  # the first of the newest: a step_N.pt
        raise UserError(f"{e}; the newest readable checkpoint beside it is {newest.name} (step {step}): resume "
                        f"from it with ckpt_path={newest.resolve()}") from None


def check_same_parameters(own: dict, state_dict: dict, path, what="this model") -> None:
    """Refuse a state dict whose parameter names or shapes differ from `own`'s (those of `what`), naming the first."""
    for name, tensor in state_dict.items():
        if name not in own:
            raise UserError(f"{path}: parameter {name} is in the checkpoint but not in {what}")
        if own[name].shape != tensor.shape:
            raise UserError(f"{path}: parameter {name} has shape {tuple(tensor.shape)} in the checkpoint but "
                            f"{tuple(own[name].shape)} in {what}")
    missing = [name for name in own if name not in state_dict]
    if missing:
        raise UserError(f"{path}: parameter {missing[0]} of {what} is missing from the checkpoint")


def load_model_weights(model, state_dict, path) -> None:
    """Copy weights into `model`, naming the first parameter whose name or shape does not match."""
    check_same_parameters(model.state_dict(), state_dict, path)
    model.load_state_dict(state_dict)


def rng_state() -> dict:
    """Every random number generator a training step draws from, as tensors and plain values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                     cached], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put back what rng_state() saved, so the next random draws are the ones the saved run made next."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def keep_last_checkpoints(ckpt_dir: Path, step: int, keep: int) -> None:
    """Keep last.pt as it is now as step_<step>.pt (a hard link: no copy), and only the `keep` latest of them."""
    kept = ckpt_dir / f"step_{step}.pt"
    kept.unlink(missing_ok=True)
    try:
        os.link(ckpt_dir / "last.pt", kept)
    except OSError:  # a file system without hard links
        save_checkpoint(kept, torch.load(ckpt_dir / "last.pt", map_location="cpu", weights_only=True))
    for old in step_checkpoints(ckpt_dir)[:-keep]:
        old.unlink()


def step_checkpoints(ckpt_dir: Path) -> list:
    """The step_N.pt files of a checkpoints folder, oldest step first."""
    found = [(int(f.stem.split("_")[1]), f) for f in ckpt_dir.glob("step_*.pt") if f.stem.split("_")[1].isdigit()]
    return [f for _, f in sorted(found)]
