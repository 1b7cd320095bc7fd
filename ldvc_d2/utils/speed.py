"""Time and peak-memory measurement for tools/benchmark_speed.py and tools/analyze_model.py,
the same on CPU and CUDA.

Time: the median of several repeats after one warm-up, on CUDA with synchronisation. ``clock="cpu"``
uses the process's CPU time instead of the wall clock: on a CPU shared with other jobs this counts only
our own work (run with one thread, OMP_NUM_THREADS=1, for it to equal the wall time of an idle core).

Peak memory: CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before the call. CPU
(Linux), the peak resident set size above the one before the call: the kernel's high-water mark
(/proc/self/status VmHWM) is reset through /proc/self/clear_refs, and glibc is told to give every
allocation above 64 KiB its own mapping for the measurement, so freed tensors leave the resident set at
once (otherwise the allocator's cache hides reuse). Elsewhere the CPU peak is reported as None.
The resident set also counts BLAS workspaces and allocator slack, and varies by a few MiB between
calls; ``tensor_peak_mib`` counts only tensors (the CPU counterpart of CUDA's max-allocated): the
peak of live tensor bytes in the allocation/free timeline torch.profiler records with
``profile_memory=True`` (its memory-timeline analysis, also behind ``export_memory_timeline``),
deterministic for a given program.

tools/analyze_model.py reports throughput and the peak itself, weights included (:class:`PeakMemory`,
:func:`measure_speed`): on CUDA ``torch.cuda.max_memory_allocated``, on the CPU the process's VmHWM (reset
before the measurement; without /proc/self/clear_refs, ``ru_maxrss`` since the process started).
"""
import ctypes
import gc
import os
import resource
import statistics
import sys
import time
from typing import Callable, Dict, Optional

import torch

__all__ = ["PeakMemory", "measure_speed", "median_seconds", "peak_mib", "synchronize", "tensor_peak_mib"]

_M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc malloc.h)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 3, clock: str = "wall") -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    if clock not in ("wall", "cpu"):
        raise ValueError(f"--clock must be 'wall' or 'cpu', got '{clock}'.")
    now = time.perf_counter if clock == "wall" or device.type == "cuda" else time.process_time
    fn()
    synchronize(device)
    times = []
    for _ in range(max(1, repeats)):
        start = now()
        fn()
        synchronize(device)
        times.append(now() - start)
    return statistics.median(times)


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"/proc/self/status has no {field}")


def peak_mib(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak memory in MiB that one call of ``fn`` adds above what was in use before it (None: unknown)."""
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        libc.malloc_trim(0)
        base = _status_mib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
    except OSError:
        return None
    try:
        fn()
        return _status_mib("VmHWM") - base
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2 ** 20)


def tensor_peak_mib(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak MiB of tensors that one call of ``fn`` allocates and holds at once (None: not measurable).
    CUDA: as ``peak_mib``. CPU: from the profiler's allocation timeline (tensors created during the call,
    minus those freed, at its highest)."""
    if device.type == "cuda":
        return peak_mib(fn, device)
    try:
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import Action, MemoryProfile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True) as prof:
            fn()
        timeline = MemoryProfile(prof.profiler.kineto_results).timeline
    except (ImportError, AttributeError, RuntimeError):  # a torch without this (private) analysis
        return None
    live = peak = 0
    for _, action, _, size in timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak / 2 ** 20


class PeakMemory:
    """Peak memory of the code in the ``with`` block, in MiB (``kind`` says what is measured)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.peak_mb = 0.0
        if self.cuda:
            self.kind = "torch.cuda.max_memory_allocated (GPU tensors)"
        elif os.path.exists("/proc/self/clear_refs"):
            self.kind = "CPU peak resident set size of the process (VmHWM, reset before the measurement)"
        else:
            self.kind = "CPU peak resident set size of the process since it started (ru_maxrss; cannot reset)"

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif "VmHWM" in self.kind:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the peak RSS (Linux >= 4.0)
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        elif "VmHWM" in self.kind:
            self.peak_mb = _status_mib("VmHWM")
        else:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak_mb = rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def measure_speed(fn: Callable[[torch.Tensor], object], image: torch.Tensor, device: torch.device, *, iters: int,
                  warmup: int) -> Dict[str, float]:
    """images/s and seconds/image over ``iters`` calls after ``warmup`` calls; peak memory of those calls."""
    with torch.no_grad():
        for _ in range(warmup):
            fn(image)
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            for _ in range(iters):
                fn(image)
            synchronize(device)
            seconds = time.perf_counter() - start
    return {"images_per_s": iters / seconds, "seconds_per_image": seconds / iters, "peak_memory_mb": memory.peak_mb,
            "memory_kind": memory.kind}
