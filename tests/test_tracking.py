"""The attention heatmaps a run logs show each head's weight for each query and key where the axes say."""

import numpy as np
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
