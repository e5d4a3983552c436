"""FLOPs of the PyTorch JITNet, as the train step and inference run them.

Both the training benchmark and the evaluation's FLOPs speedup count with this one function.
"""
from __future__ import annotations

from typing import Any


def count_gflops(model: Any, height: int, width: int) -> tuple[float, float]:
    """(forward, forward + backward) GFLOPs of one frame, as the train step runs them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, height, width) * 255.0
    labels = torch.zeros(1, height, width, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    infer = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return infer / 1e9, counter.get_total_flops() / 1e9
