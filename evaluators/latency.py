"""Latency of generators on one image: medians of repeated forward passes, interleaved when compared."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def _synchronize(device: torch.device | str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def latencies(models: dict[str, nn.Module], *, channels: int = 3, size: int = 256, repeats: int = 25,
              device: torch.device | str = "cpu", threads: int | None = None, batch: int = 1) -> dict[str, float]:
    """Median seconds per ``batch`` x C x S x S forward of each model, the models interleaved so that machine
    noise hits all alike (one warm-up pass each). ``threads`` sets torch's CPU threads for the run."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        x = torch.rand(batch, channels, size, size, device=device) * 2 - 1
        times: dict[str, list[float]] = {name: [] for name in models}
        for model in models.values():
            model.eval()(x)
        for _ in range(repeats):
            for name, model in models.items():
                _synchronize(device)
                began = time.perf_counter()
                model(x)
                _synchronize(device)
                times[name].append(time.perf_counter() - began)
        return {name: statistics.median(t) for name, t in times.items()}
    finally:
        torch.set_num_threads(previous)


def median_latency_ms(module: nn.Module, channels: int, size: int, repeats: int, device: str) -> float:
    """Milliseconds per 1 x C x S x S forward of one model (median of ``repeats`` after a warm-up)."""
    return 1e3 * latencies({"model": module}, channels=channels, size=size, repeats=repeats, device=device)["model"]
