"""``--dry-run``: what a stage would do, measured on a short warm-up, printed, and nothing written.

Every stage resolves its options, opens the data and builds its model as a real run does; the dry run then times a
few calls of the stage's unit of work (a training step, a grid chunk of one pair, one registration) with
:func:`measure` and prints :class:`Plan` (pairs, steps, parameters, expected time, peak memory) instead of running.
Memory is the device's: on CUDA the peak allocated by torch (``torch.cuda.max_memory_allocated``); on the CPU the
peak resident size of the process (``VmHWM``, reset before the warm-up where Linux allows it, else
``resource.getrusage``) and its increase over the resident size before the warm-up.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..runtime import current_rss_bytes, max_rss_bytes, peak_rss_bytes, reset_peak_rss

__all__ = ["DRY_RUN_RESULT", "Measurement", "measure", "Plan", "format_duration", "format_bytes", "count_parameters"]

#: What a dry run returns to :func:`..cli.run_stage` (printed as ``done: ...``).
DRY_RUN_RESULT = "dry run, nothing written"
MIB = 2 ** 20


@dataclass(frozen=True)
class Measurement:
    """Median wall seconds per call (the first call, which pays for allocations, excluded when there are more),
    the calls made, the peak memory in bytes and its increase over the level before the first call, and what kind
    of memory that is."""

    seconds: float
    calls: int
    peak_bytes: int
    added_bytes: int
    memory_kind: str


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(work: Callable[[], Any], device: torch.device, calls: int = 3) -> Measurement:
    """Call ``work`` ``calls`` times on ``device`` and measure time and memory (see the module docstring)."""
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    device = torch.device(device)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = current_rss_bytes()
        reset_peak_rss()
    times = []
    for _ in range(calls):
        _sync(device)
        start = time.perf_counter()
        work()
        _sync(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device), "CUDA peak allocated by torch"
    else:
        peak = peak_rss_bytes()
        peak, kind = (peak if peak is not None else max_rss_bytes()), "peak resident memory of the process"
    timed = times[1:] if len(times) > 1 else times
    return Measurement(statistics.median(timed), calls, int(peak), max(0, int(peak - before)), kind)


def format_duration(seconds: float) -> str:
    """``93.2`` -> ``"1 min 33 s"``; hours and days as needed."""
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days} d"] * bool(days) + [f"{hours} h"] * bool(hours) + [f"{minutes} min"] * bool(minutes)
    return " ".join(parts + ([f"{secs} s"] if not days and not hours else []))


def format_bytes(count: float) -> str:
    """``3.2e9`` -> ``"2.98 GiB"``."""
    if count >= 2 ** 30:
        return f"{count / 2 ** 30:.2f} GiB"
    return f"{count / MIB:.0f} MiB"


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Plan:
    """The printed plan of a dry run: a title and ``(what, value)`` lines, plus measured units of work."""

    title: str
    lines: list[tuple[str, str]] = field(default_factory=list)

    def add(self, what: str, value: Any) -> "Plan":
        self.lines.append((what, str(value)))
        return self

    def add_measurement(self, what: str, measurement: Measurement, count: int, unit: str) -> "Plan":
        """``what``: seconds per ``unit`` and the expected total for ``count`` of them, and the memory."""
        total = measurement.seconds * count
        self.add(what, f"{measurement.seconds:.3g} s per {unit} (median of {max(1, measurement.calls - 1)} after "
                       f"{'a warm-up call' if measurement.calls > 1 else 'no warm-up'}) -> about "
                       f"{format_duration(total)} for {count} {unit}{'s' if count != 1 else ''}")
        self.add(f"{what} memory", f"{format_bytes(measurement.peak_bytes)} {measurement.memory_kind} "
                                   f"(+{format_bytes(measurement.added_bytes)} during the warm-up)")
        return self

    def text(self) -> str:
        width = max((len(what) for what, _ in self.lines), default=0)
        return "\n".join([f"dry run: {self.title} (nothing is written)"]
                         + [f"  {what:<{width}}  {value}" for what, value in self.lines])

    def print(self) -> str:
        text = self.text()
        print(text, flush=True)
        return DRY_RUN_RESULT
