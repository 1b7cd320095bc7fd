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

tools/analyze_model.py times several models image by image in turn, so they share a shared machine's
load (:func:`interleaved_speed`), and reports each model's weights plus the most one image adds
(:func:`peak_mib`).

Allocator (CPU, glibc): both tools time in one stated state of glibc's malloc (:func:`settle_allocator`):
allocations up to 32 MiB from the heap and freed heap memory kept up to 64 MiB, the most that glibc's own
thresholds rise to once a process has freed a large block, as a model's forward pass does. A fresh process
starts lower (128 KiB), so a lone layer that allocates and frees tens of MiB per call gets its pages back
from the kernel on every call: one LCSA layer at 32×32 tokens then spends ~2.5-3k page faults per call
(global attention under 1k), 10-20% of its time, which inside a model it does not.
"""
import ctypes
import gc
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["interleaved_seconds", "interleaved_speed", "median_seconds", "memory_kind", "peak_mib",
           "settle_allocator", "synchronize", "tensor_peak_mib"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)
_MMAP_THRESHOLD_MAX = 32 * 2 ** 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems


def _libc() -> Optional[ctypes.CDLL]:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def settle_allocator() -> bool:
    """Put glibc's malloc in the state the timings use (module text): heap allocations up to 32 MiB, freed
    heap memory kept up to 64 MiB (the highest values of glibc's own dynamic thresholds). False where
    there is no glibc (nothing changed)."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(clock: str, device: torch.device) -> Callable[[], float]:
    if clock not in ("wall", "cpu"):
        raise ValueError(f"--clock must be 'wall' or 'cpu', got '{clock}'.")
    return time.perf_counter if clock == "wall" or device.type == "cuda" else time.process_time


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 3, clock: str = "wall") -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    return statistics.median(interleaved_seconds([fn], [device], repeats, clock)[0])


def interleaved_seconds(fns: Sequence[Callable[[], object]], devices: Sequence[torch.device], repeats: int = 3,
                        clock: str = "wall", warmup: int = 1) -> List[List[float]]:
    """Seconds of each of ``fns`` (running on ``devices``, one each) in ``repeats`` rounds that call every
    function once, in turn, after ``warmup`` calls of each: a load that comes and goes on a shared machine
    falls on all of them alike, so their ratios hold within one run."""
    clocks = [_clock(clock, device) for device in devices]
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: List[List[float]] = [[] for _ in fns]
    for _ in range(max(1, repeats)):
        for i, (fn, device, now) in enumerate(zip(fns, devices, clocks)):
            synchronize(device)
            start = now()
            fn()
            synchronize(device)
            times[i].append(now() - start)
    return times


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
    libc = _libc()
    if libc is None:
        return None
    try:
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        libc.malloc_trim(0)
        base = _status_mib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
    except OSError:
        settle_allocator()
        return None
    try:
        fn()
        return _status_mib("VmHWM") - base
    finally:
        settle_allocator()  # the timings' state again (not glibc's start-up thresholds)


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


def memory_kind(device: torch.device) -> str:
    """What :func:`peak_mib` measures on ``device``."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated above the memory allocated before the call (GPU tensors)"
    return "CPU peak resident set size (VmHWM, reset before the call) above the resident set before it"


def interleaved_speed(runs: Sequence[Tuple[Callable[[torch.Tensor], object], torch.Tensor, torch.device]], *,
                      iters: int, warmup: int, clock: str = "wall") -> List[Dict[str, object]]:
    """Time several inference functions against each other: after ``warmup`` calls of each, ``iters`` rounds
    in which every function handles the image once, in turn, so a load that comes and goes on a shared
    machine falls on all of them alike. Per function: the median seconds per image over its rounds
    (``clock``: "wall" or "cpu", the process's CPU time, see the module text), images/s, and the most memory
    one further call adds above what was in use before it (:func:`peak_mib`; None where unknown)."""
    with torch.no_grad():
        times = interleaved_seconds([lambda fn=fn, image=image: fn(image) for fn, image, _ in runs],
                                    [device for *_, device in runs], iters, clock, warmup)
        results = []
        for (fn, image, device), seconds in zip(runs, times):
            median = statistics.median(seconds)
            results.append({"images_per_s": 1.0 / median, "seconds_per_image": median, "seconds": seconds,
                            "clock": "cpu" if _clock(clock, device) is time.process_time else "wall",
                            "added_memory_mb": peak_mib(lambda: fn(image), device),
                            "memory_kind": memory_kind(device)})
    return results
