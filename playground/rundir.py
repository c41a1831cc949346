"""A new run never writes into another run's directory, and a sweep preset never runs without -m: both refused
before Hydra writes its .hydra/ files. A refused command leaves what it found as it was. What a mode prints as a
table or a summary goes into the run's log file too (`log_file_only`), and the commands it prints for the next step
can be pasted as they are (`command_line`, `quoted_override`)."""

import contextlib
import logging
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

from .checks import check_not_a_sweep
from .errors import UserError

RUN_FILES = ("checkpoints", "metrics.json", "hypotheses.txt", "exported")  # exported/: what mode=export writes


def run_file_in(folder: Path):
    """The name of the first file of a run that `folder` holds (checkpoints/, metrics.json, hypotheses.txt,
    exported/, a TensorBoard event file), or None."""
    for name in RUN_FILES:
        if (folder / name).exists():
            return name
    events = next(folder.glob("events.out.tfevents.*"), None)
    return events.name if events else None


_RECORD = {}  # the used run directory's .hydra/ files as they were before this command: {path: bytes}
_CREATED = []  # the run directory, if this command makes it, and the folders above it that it makes too


def keep_record(record_dir: Path | None, checkpoint: Path) -> None:
    """Remember the files of a run's record (its .hydra/ folder) before Hydra writes this command's over them, and
    the state of its last checkpoint: the record goes back only if the refused command wrote no checkpoint."""
    _RECORD.clear()
    if record_dir is not None and record_dir.is_dir():
        _RECORD.update({path: path.read_bytes() for path in record_dir.iterdir() if path.is_file()})
        _RECORD[checkpoint] = _stamp(checkpoint)


def _stamp(path: Path):
    """When and how large a file was last written (None: it is not there)."""
    return (path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else None


def note_created(folder: Path) -> None:
    """Note the folders Hydra is about to make for this run: `folder` and any missing folders above it."""
    _CREATED.clear()
    _RECORD.clear()  # a record kept by an earlier run in this process is that run's, not this one's
    folder = Path(folder).resolve()  # now: with hydra.job.chdir=true the working folder changes before a refusal
    while not folder.exists():
        _CREATED.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent


def undo_refused_run(run_dir) -> None:
    """A refused command leaves the place it was run in as it was: the run directory `run_dir`, if this command
    made it, holds only Hydra's record and log, and is removed (with the folders made above it, where they are
    empty: another run may have made one of them since); a used one gets its .hydra/ record back (a refused resume
    did not run)."""
    untrained = all(_stamp(path) == data for path, data in _RECORD.items() if not isinstance(data, bytes))
    for path, data in _RECORD.items():
        if untrained and isinstance(data, bytes) and path.parent.is_dir():  # a run that trained keeps its new record
            temporary = path.with_name(path.name + ".restoring")
            temporary.write_bytes(data)
            temporary.replace(path)
    _RECORD.clear()
    made = bool(_CREATED) and _CREATED[0].is_dir() and _CREATED[0] == Path(run_dir).resolve()
    if made and run_file_in(_CREATED[0]) is None:
        shutil.rmtree(_CREATED[0], ignore_errors=True)
        for folder in _CREATED[1:]:
            try:
                folder.rmdir()  # only while empty
            except OSError:
                break
    _CREATED.clear()


WRITE_PROBE = ".playground-write-test"  # written into a run's folder and removed before Hydra writes there


def _make_folder(folder: Path, key: str, what: str) -> None:
    """Make the run's (or the sweep's) folder before Hydra does, and write a few bytes into it, so that a path that
    cannot be a folder (a data file given as hydra.run.dir, say), or a folder that cannot be written to (a full disk,
    a read-only one), is one line and exit 2 rather than Hydra's traceback."""
    probe = folder / WRITE_PROBE
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        undo_refused_run(folder)  # the folders above it that this made, if any
        why = "is a file, not a folder" if folder.is_file() else f"cannot be made ({e.strerror or e})"
        print(f"error: {key}={folder} {why}: give {what} a folder with {key}=...", file=sys.stderr)
        sys.exit(2)
    try:
        with open(probe, "wb") as f:
            f.write(bytes(4096))  # Hydra's record and log, about as much
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        with contextlib.suppress(OSError):  # not there (a read-only disk answers so, not "no such file")
            probe.unlink()
        undo_refused_run(folder)
        print(f"error: {key}={folder} cannot be written to ({e.strerror or e}): give {what} a folder it can write to "
              f"with {key}=...", file=sys.stderr)
        sys.exit(2)


def undo_interrupted_run(run_dir) -> bool:
    """After a Ctrl-C that came before the first checkpoint (while the data was read or the model built): the run
    directory this command made goes, as a refused run's does, TensorBoard's first lines with it (there is nothing to
    resume, and a run that did not train would otherwise show in TensorBoard and count as a used directory); a used
    one gets its .hydra/ record back. Returns True where the run directory is gone."""
    folder = Path(run_dir).resolve()
    if _CREATED and _CREATED[0] == folder and not any((folder / name).exists() for name in RUN_FILES):
        for events in folder.glob("events.out.tfevents.*"):
            events.unlink()
    undo_refused_run(run_dir)
    return not folder.exists()


class RunDirectoryGuard(Callback):
    """Registered in configs/config.yaml: Hydra calls on_run_start before it makes or writes the run directory, and
    on_multirun_start before it makes the sweep's."""

    def on_multirun_start(self, config, **kwargs) -> None:
        folder = Path(config.hydra.sweep.dir)
        note_created(folder)
        _make_folder(folder, "hydra.sweep.dir", "the sweep")

    def on_run_start(self, config, **kwargs) -> None:
        try:
            check_not_a_sweep(config.hydra)  # a sweep preset without -m: refused before any folder is made
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        folder = Path(config.hydra.run.dir)
        note_created(folder)
        _make_folder(folder, "hydra.run.dir", "the run")
        if config.trainer.auto_resume and (folder / "checkpoints" / "last.pt").is_file():
            # a requeued job resuming itself: the one used directory a run may write into. Hydra is about to write
            # this command's config into its .hydra/ folder: kept, to be put back if the resume is refused
            keep_record(folder / config.hydra.output_subdir if config.hydra.output_subdir is not None else None,
                        folder / "checkpoints" / "last.pt")
            return
        found = run_file_in(folder) if folder.is_dir() else None
        if found:
            print(f"error: {folder} already holds a run ({found}): refusing to write into it (give this run its own "
                  f"directory with hydra.run.dir=...)", file=sys.stderr)
            sys.exit(2)


def log_file_only(logger: logging.Logger, message: str) -> None:
    """An INFO line from `logger` for the run's log file (Hydra's job log) only: for what the console has already
    seen printed in another form (the final metrics' table, the summary of mode=average or export)."""
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def quoted_override(key: str, value) -> str:
    """key=value as Hydra reads back exactly `value` (one word of the command line, before the shell's quoting): a
    sweep job's folder name holds "=" and ",", which Hydra's parser takes for an override and a list unless the
    value is quoted (key="a=1,b=2")."""
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9_./+@-]+", text):  # what Hydra reads unquoted (not "~", not a letter like "é")
        return f"{key}={text}"
    # in Hydra's quoted values a backslash is doubled only where it comes before a quote or at the end
    escaped = re.sub(r'(\\+)(?="|$)', lambda m: m.group(1) * 2, text).replace('"', '\\"')
    return f'{key}="{escaped}"'


def pasted_override(key: str, value) -> str:
    """quoted_override(key, value) quoted for the shell too: one word of a command line to paste as it is."""
    return shlex.quote(quoted_override(key, value))


def command_line(*words: str) -> str:
    """The command that runs the entry point with these words (overrides as Hydra reads them), as one line to paste
    into a shell; under torchrun (WORLD_SIZE above 1), torchrun with this run's number of processes, since a
    checkpoint resumes with as many as wrote it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    nodes = world // max(local, 1)
    if world == 1:
        start = "python transformer_playground.py"
    else:
        start = "torchrun " + (f"--nnodes={nodes} " if nodes > 1 else "") + f"--nproc_per_node={local} transformer_playground.py"
    line = " ".join([start, *map(shlex.quote, words)])
    if nodes > 1:
        line += f"\n(on each of the {nodes} machines, with the rendezvous options this run was started with)"
    return line
