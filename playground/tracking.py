"""TensorBoard logging into the run directory: tags are `split/metric` (train/loss, valid/exact_match, ...).

Everything goes into the run directory itself, so `tensorboard --logdir outputs` (or multirun/...) lists
one run per directory: scalars, the HParams tab, attention heatmaps (IMAGES) and sample outputs (TEXT).
"""

import matplotlib

matplotlib.use("Agg")  # draw into memory: no window, works on servers
import matplotlib.pyplot as plt  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402
from torch.utils.tensorboard.summary import hparams  # noqa: E402


class Tracker:
    """A thin SummaryWriter wrapper; with enabled=False (non-zero ranks, eval runs) every call does nothing."""

    def __init__(self, log_dir, enabled=True):
        self.writer = SummaryWriter(log_dir=str(log_dir)) if enabled else None

    def scalars(self, values: dict, step: int) -> None:
        if self.writer:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        if self.writer:
            self.writer.add_text(tag, markdown, step)

    def hparams(self, params: dict, metric_tags) -> None:
        """Declare this run's hyper-parameters and the scalar tags the HParams tab compares runs by.

        SummaryWriter.add_hparams would write into a new timestamped subfolder, a second "run" that a
        sweep's runs do not line up with; these are the same summaries, written into the run's own file.
        """
        if self.writer:
            summaries = hparams({k: _hparam_value(v) for k, v in params.items()}, {tag: 0.0 for tag in metric_tags})
            file_writer = self.writer._get_file_writer()
            for summary in summaries:
                file_writer.add_summary(summary)

    def attention(self, tag: str, weights, queries, keys, step: int) -> None:
        """One heatmap per head of weights (H, T, S), queries down the side and keys along the top."""
        if not self.writer:
            return
        heads = weights.shape[0]
        fig, axes = plt.subplots(1, heads, figsize=(0.25 * len(keys) * heads + 1.5, 0.25 * len(queries) + 1.2),
                                 squeeze=False, dpi=80)
        for h, ax in enumerate(axes[0]):
            ax.imshow(weights[h].float().cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"head {h}", fontsize=8)
            ax.set_xticks(range(len(keys)), keys, fontsize=6, rotation=90)
            ax.set_yticks(range(len(queries)), queries if h == 0 else [""] * len(queries), fontsize=6)
        fig.tight_layout()
        self.writer.add_figure(tag, fig, step)  # closes the figure

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def _hparam_value(value):
    return value if isinstance(value, (bool, int, float, str)) else str(value)
