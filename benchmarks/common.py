"""Shared benchmark plumbing: device facts, timing, peak memory, CSV rows, result paths, flags."""

import argparse
import csv
import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
GRAPH_REPLAYS = 10  # CUDA-graph replays per timed sample (see time_side_by_side)


def bounded(kind, low, *, strict=False):
    """argparse type: an int or a finite float (`kind`) >= `low`, or > `low` when `strict`."""
    what = f"{'an int' if kind is int else 'a finite number'} {'>' if strict else '>='} {low}"

    def parse(text):
        try:
            x = kind(text)
        except ValueError:
            x = None
        if x is None or not (x > low if strict else x >= low) or x == float("inf"):  # NaN fails both
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return x
    return parse


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def device_slug(device):
    """Short file-name tag: 'cpu', or the GPU model such as 'h100'."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    m = re.search(r"\b([a-z]\d{2,4}[a-z]?)\b", name)
    return m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def versions():
    out = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton
        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = "none"
    import ipa
    from ipa.ops import _backends

    out["ipa"] = ipa.__version__
    cpp = _backends._load("cpp")
    out["cpu_kernels"] = cpp.isa() if cpp is not None else "none"  # ipa._C's instruction-set variant
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn, device, calls=1):
    """ms per call over `calls` back-to-back calls of `fn()`."""
    if device.type == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(calls):
            fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) * 1e3 / calls


def _summary(times):
    times = sorted(times)
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return statistics.median(times), q[0], q[-1], len(times)


def time_fn(fn, device, *, min_reps=5, max_reps=50, budget_s=2.0, warmup=2, calls=1):
    """Median and 10th/90th percentile wall time (ms) of `fn()` after warm-up.

    On CUDA each sample is bracketed by events; on CPU by perf_counter (the ops are synchronous).
    A sample is `calls` back-to-back calls (reported per call). Repeats until `budget_s` is spent,
    within [min_reps, max_reps] samples.
    """
    return time_side_by_side({"fn": fn}, device, min_reps=min_reps, max_reps=max_reps,
                             budget_s=budget_s, warmup=warmup, calls=calls)["fn"]


def time_side_by_side(fns, device, *, min_reps=5, max_reps=50, budget_s=2.0, warmup=2, block=4, calls=1):
    """`time_fn` for several implementations, interleaved in short blocks so that a load spike or
    a clock change hits all of them alike (ratios stay honest on a shared machine).

    Each block starts with one untimed call: switching implementation changes the allocator's
    state (an eager step frees ~100 MB of temporaries), and that transition is not the
    implementation's own cost. `calls` > 1 times CUDA-graph replays back to back: one replay
    between two events would also time the host's launch of it (~6 us measured on an H200,
    benchmarks/NOTES.md), which a training step hides behind the GPU's queue."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {k: [] for k in fns}
    start = time.perf_counter()
    while min(len(v) for v in times.values()) < max_reps and (
            min(len(v) for v in times.values()) < min_reps or time.perf_counter() - start < budget_s * len(fns)):
        for k, fn in fns.items():
            fn()
            sync(device)
            for _ in range(block):
                times[k].append(_time_once(fn, device, calls))
    return {k: _summary(v) for k, v in times.items()}


def graph_replayer(fns, warmup=2):
    """One CUDA graph per zero-argument function (each closing over its own inputs), replayed in
    turn: what a call costs the GPU once the CPU runs ahead of it, as in a training step where the
    model's kernels queue behind it. METHOD.md's advice for many small launches; the host's
    dispatch (Python, autograd, launches) is timed separately, per call.

    Warm-up runs on a side stream first (compilation, autotuning and the allocator's first
    allocations stay out of the capture), then each function is captured once into a shared
    memory pool; replaying in capture order keeps that sharing safe."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for fn in fns:
            for _ in range(warmup):
                fn()
    torch.cuda.current_stream().wait_stream(side)
    pool = torch.cuda.graph_pool_handle()
    graphs = []
    for fn in fns:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            fn()
        graphs.append(g)
    state = {"i": 0}

    def replay():
        graphs[state["i"] % len(graphs)].replay()
        state["i"] += 1

    return replay


def peak_extra_bytes(fn, device):
    """Peak bytes allocated by one call of `fn()` beyond what was live before it.

    CUDA: the caching allocator's peak counter. CPU: the profiler's allocation trace, replayed in
    time order (each event's own allocations minus frees).
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    total = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        total += e.self_cpu_memory_usage
        peak = max(peak, total)
    return peak


def copy_bandwidth(nbytes, device):
    """Achieved GB/s of a device-to-device copy of `nbytes` (bytes read + bytes written). On CUDA
    the copy is a graph replay, timed as `ipa bench ops` times its steps (no launch latency)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy = lambda: dst.copy_(src)  # noqa: E731
    cuda = device.type == "cuda"
    fn = graph_replayer([copy]) if cuda else copy
    med, *_ = time_fn(fn, device, min_reps=5, budget_s=1.0, calls=GRAPH_REPLAYS if cuda else 1)
    return 2 * src.numel() * 4 / (med * 1e-3) / 1e9


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written results file


def print_table(rows, columns):
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).rjust(widths[c]) for c in columns))
