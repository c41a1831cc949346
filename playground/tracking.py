"""TensorBoard logging into the run directory: tags are `split/metric` (train/loss, valid/exact_match, ...).

Everything goes into the run directory itself, so `tensorboard --logdir outputs` (or multirun/...) lists
one run per directory: scalars, the HParams tab, attention heatmaps (IMAGES) and sample outputs (TEXT).
"""

import contextlib
import threading
import weakref

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from .errors import UserError


class Tracker:
    """A thin SummaryWriter wrapper; with enabled=False (non-zero ranks, eval runs) every call does nothing."""

    def __init__(self, log_dir, enabled=True, purge_step=None):
        # purge_step: the events of earlier writers in log_dir at this step or later are hidden (a run continued)
        self.log_dir, self.writer = log_dir, None
        if enabled:
            with self._writing():
                self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        _OPEN.add(self)

    @contextlib.contextmanager
    def _writing(self):
        """A write the disk refuses (full, gone, read-only; in the writer's thread, it raises at the next call) is one
        line naming the run directory, not a traceback."""
        try:
            yield
        except OSError as e:
            self.writer = None  # nothing more goes to it
            raise UserError(f"{self.log_dir}: the TensorBoard event file could not be written "
                            f"({e.strerror or e})") from None

    def scalars(self, values: dict, step: int) -> None:
        if self.writer:
            with self._writing():
                for tag, value in values.items():
                    self.writer.add_scalar(tag, value, step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        if self.writer:
            with self._writing():
                self.writer.add_text(tag, markdown, step)

    def hparams(self, params: dict, metric_tags) -> None:
        """Declare this run's hyper-parameters and the scalar tags the HParams tab compares runs by.

        SummaryWriter.add_hparams would write into a new timestamped subfolder, a second "run" that a
        sweep's runs do not line up with; these are the same summaries, written into the run's own file.
        """
        if self.writer:
            summaries = hparams({k: _hparam_value(v) for k, v in params.items()}, {tag: 0.0 for tag in metric_tags})
            with self._writing():
                file_writer = self.writer._get_file_writer()
                for summary in summaries:
                    file_writer.add_summary(summary)

    def layout(self) -> None:
        """TensorBoard's CUSTOM SCALARS tab: train and valid loss on one chart (both label-smoothed), and the
        validation NLL and perplexity (unsmoothed) beside it; the attention heads' entropy, one chart per kind of
        attention, and their alignment accuracy (playground/diagnostics.py)."""
        if self.writer:
            charts = {"loss": {
                "train/loss and valid/loss (label-smoothed)": ["Multiline", ["train/loss", "valid/loss"]],
                "valid/nll (nats per target token)": ["Multiline", ["valid/nll"]],
                "valid/ppl": ["Multiline", ["valid/ppl"]]}, "attention": {
                "encoder self-attention entropy (nats), every layer and head":
                    ["Multiline", [r"attention_entropy/encoder\..*"]],
                "decoder self-attention entropy (nats)": ["Multiline", [r"attention_entropy/decoder\..*self_attn.*"]],
                "decoder cross-attention entropy (nats)": ["Multiline", [r"attention_entropy/decoder\..*cross_attn.*"]],
                "alignment accuracy of the last decoder layer's heads (synthetic tasks)":
                    ["Multiline", [r"attention_alignment/.*", "valid/attention_alignment"]]}}
            with self._writing():
                self.writer.add_custom_scalars(charts)

    def attention(self, tag: str, weights, queries, keys, step: int) -> None:
        """One heatmap per head of weights (H, T, S), queries down the side and keys along the bottom."""
        if self.writer:
            with self._writing():
                self.writer.add_image(tag, attention_image(weights, queries, keys), step, dataformats="HWC")

    def close(self) -> None:
        if self.writer:
            with self._writing():
                self.writer.flush()  # raises what the writer's thread failed to write; close() would not
                self.writer.close()
            self.writer = None


_OPEN = weakref.WeakSet()  # every Tracker not yet garbage


def close_all() -> None:
    """Flush and close every Tracker's event file: after a Ctrl-C, before the run directory is judged (its event
    file is written by a thread of its own, which may create it only at its first flush)."""
    for tracker in list(_OPEN):
        try:
            tracker.close()
        except UserError:  # a full disk: what could be written is, and the Ctrl-C is what is reported
            pass


_thread_excepthook = threading.excepthook  # what reports any other thread's exception


def _quiet_writer_thread(args) -> None:
    """TensorBoard's writer thread ends on a write the disk refuses with a traceback of its own, and the run's next
    call to the writer raises the same error again, which Tracker._writing turns into one line: that line is enough."""
    if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
        return
    _thread_excepthook(args)


threading.excepthook = _quiet_writer_thread


def _hparam_value(value):
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def attention_image(weights, queries, keys, cell: int = 16) -> np.ndarray:
    """Heads side by side as heatmaps: weights (H, T, S) in [0, 1] -> an RGB image (height, width, 3), uint8.

    Drawn with Pillow, a square of `cell` pixels per weight, so that a run can log every layer at every
    evaluation: a matplotlib figure with tick labels took 0.2-0.4 s per layer on a 2-core CPU, this takes ~5 ms.
    """
    H, T, S = weights.shape
    font = ImageFont.load_default(size=cell - 4)
    text_width = lambda words: max((int(font.getlength(w)) for w in words), default=0) + 4
    left, top, gap = text_width(queries), cell + 4, cell
    bottom = text_width(keys)
    panel = max(S * cell, text_width([f"head {H - 1}"]))  # a one- or two-key map still fits its title
    image = Image.new("RGB", (left + H * panel + (H - 1) * gap + 2, top + T * cell + bottom), "white")
    draw = ImageDraw.Draw(image)
    colours = (colormaps["viridis"](weights.detach().float().clamp(0, 1).cpu().numpy())[..., :3] * 255).astype(np.uint8)
    key_labels = [Image.new("RGB", (bottom, cell), "white") for _ in keys]  # drawn once, pasted under every head
    for label, word in zip(key_labels, keys):
        ImageDraw.Draw(label).text((bottom - 2, cell / 2), word, fill="black", font=font, anchor="rm")
    key_labels = [label.rotate(90, expand=True) for label in key_labels]  # (cell wide, bottom tall), reading upwards
    for t, word in enumerate(queries):
        draw.text((left - 2, top + t * cell + cell / 2), word, fill="black", font=font, anchor="rm")
    for h in range(H):
        x = left + h * (panel + gap)
        heatmap = colours[h].repeat(cell, axis=0).repeat(cell, axis=1)  # (T * cell, S * cell, 3)
        image.paste(Image.fromarray(heatmap), (x, top))
        draw.text((x, 1), f"head {h}", fill="black", font=font)
        for s_, label in enumerate(key_labels):
            image.paste(label, (x + s_ * cell, top + T * cell))
    return np.asarray(image)
