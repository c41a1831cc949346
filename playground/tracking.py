"""TensorBoard logging into the run directory: tags are `split/metric` (train/loss, valid/exact_match, ...)."""

from torch.utils.tensorboard import SummaryWriter


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

    def close(self) -> None:
        if self.writer:
            self.writer.close()
