"""The attention heatmaps a run logs show each head's weight for each query and key where the axes say."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from playground.tracking import attention_image


def test_the_attention_image_puts_each_weight_in_its_head_row_and_column():
    weights = torch.zeros(3, 4, 5)  # (H, T, S)
    weights[1, 2, 3] = 1.0  # head 1: query 2 attends only to key 3
    queries, keys = ["<s>", "a", "b", "c"], ["x", "y", "z", "w", "</s>"]
    cell = 16
    image = attention_image(weights, queries, keys, cell=cell).astype(int)  # (height, width, 3)
    assert image.dtype.kind == "i" and image.shape[2] == 3

    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    ys, xs = np.nonzero((r > 200) & (g > 200) & (b < 100))  # viridis is yellow at 1: the only yellow cell
    assert ys.max() - ys.min() == cell - 1 and xs.max() - xs.min() == cell - 1  # exactly one weight's square
    zero_colour = image[ys.min() - cell, xs.min()]  # the cell above it: weight 0, viridis purple
    heat_rows = np.nonzero((image == zero_colour).all(-1).any(1))[0]
    top = heat_rows.min()
    heat_cols = np.nonzero((image == zero_colour).all(-1).any(0))[0]
    panel_starts = [heat_cols.min()] + [c for a, c in zip(heat_cols, heat_cols[1:]) if c - a > 1]
    assert len(panel_starts) == 3  # three heads side by side
    assert (ys.min() - top) // cell == 2  # query 2
    assert xs.min() - panel_starts[1] == 3 * cell  # head 1, key 3


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the writer thread's own
def test_a_full_disk_under_the_event_file_is_one_line_naming_the_run_directory(tmp_path, monkeypatch):
    from tensorboard.summary.writer.record_writer import RecordWriter

    from playground.errors import UserError
    from playground.tracking import Tracker

    def full(self, data):
        raise OSError(28, "No space left on device")

    tracker = Tracker(tmp_path)
    monkeypatch.setattr(RecordWriter, "write", full)  # TensorBoard's writer thread writes each event through it
    with pytest.raises(UserError, match=rf"^{tmp_path}: the TensorBoard event file could not be written \(No space "
                                        rf"left on device\)$"):
        for step in range(1, 101):
            tracker.scalars({"train/loss": 1.0}, step)
        tracker.close()  # a write that failed after the last call is raised here


def test_the_event_writer_threads_own_traceback_is_left_to_the_one_line(monkeypatch):
    import threading

    from playground import tracking

    class _AsyncWriterThread(threading.Thread):  # TensorBoard's writer thread, by its name
        pass

    reported = []
    monkeypatch.setattr(tracking, "_thread_excepthook", reported.append)
    failed = SimpleNamespace(exc_type=OSError, exc_value=OSError(28, "No space left on device"), exc_traceback=None,
                             thread=_AsyncWriterThread())
    other = SimpleNamespace(exc_type=ValueError, exc_value=ValueError("a bug"), exc_traceback=None,
                            thread=threading.Thread())
    for args in (failed, other):
        tracking._quiet_writer_thread(args)  # threading.excepthook outside pytest, which sets its own in a test
    assert reported == [other]  # any other thread's exception is reported as before
