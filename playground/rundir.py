"""A new run never writes into another run's directory, and a sweep preset never runs without -m: both refused
before Hydra writes its .hydra/ files."""

import sys
from pathlib import Path

from hydra.experimental.callback import Callback

from .config import check_not_a_sweep
from .errors import UserError

RUN_FILES = ("checkpoints", "metrics.json", "hypotheses.txt")


def run_file_in(folder: Path):
    """The name of the first file of a run that `folder` holds (checkpoints/, metrics.json, hypotheses.txt, a
    TensorBoard event file), or None."""
    for name in RUN_FILES:
        if (folder / name).exists():
            return name
    events = next(folder.glob("events.out.tfevents.*"), None)
    return events.name if events else None


class RunDirectoryGuard(Callback):
    """Registered in configs/config.yaml: Hydra calls on_run_start before it makes or writes the run directory."""

    def on_run_start(self, config, **kwargs) -> None:
        try:
            check_not_a_sweep(config.hydra)  # a sweep preset without -m: refused before any folder is made
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        folder = Path(config.hydra.run.dir)
        if config.trainer.auto_resume and (folder / "checkpoints" / "last.pt").is_file():
            return  # a requeued job resuming itself: the one used directory a run may write into
        found = run_file_in(folder) if folder.is_dir() else None
        if found:
            print(f"error: {folder} already holds a run ({found}): refusing to write into it (give this run its own "
                  f"directory with hydra.run.dir=...)", file=sys.stderr)
            sys.exit(2)
