"""Where the fused IPA step's GPU time goes, and the Triton kernels' launch configurations.

    python -m benchmarks.tune_halo [--size 720p-b8] [--dtypes bf16 fp32]      (CUDA only)

Each kernel is timed alone, as back-to-back CUDA-graph replays over rotated input sets, against a
device copy measured the same way: the forward (reads pred, ref, target, mask: 3 N s + M bytes)
and the backward (reads pred, target, mask, writes the gradient: 3 N s + M) over block sizes and
warp counts, and the per-sample fold over its tile and warps. Every configuration's output is
checked against the first configuration's. Then torch.profiler lists the kernels of one whole
fused step and of torch.compile's, and the whole step is timed with the shipped and the best
configurations side by side. Results: benchmarks/results/tune-halo-<device>.csv; what was learned
goes to benchmarks/NOTES.md.
"""

import argparse
import contextlib
import math
from pathlib import Path

import torch
import triton

from ipa.kernels import halo

from . import ops
from .common import (GRAPH_REPLAYS, RESULTS, copy_bandwidth, device_slug, graph_replayer, print_table,
                     time_side_by_side, write_csv)

BLOCKS = (1024, 2048, 4096, 8192, 16384)
WARPS = (4, 8, 16)
FOLD = [(tile, warps) for tile in (1024, 2048, 4096, 8192) for warps in (4, 8, 16)]
SKIP, HAND_WEIGHT = 1, 10.0


def graph_ms(fns, device, budget_s=0.4):
    """Median ms per call of back-to-back replays of one graph per input set."""
    return time_side_by_side({"x": graph_replayer(fns)}, device, min_reps=5, budget_s=budget_s,
                             calls=GRAPH_REPLAYS)["x"][0]


@contextlib.contextmanager
def launch_config(fwd=None, bwd=None, fold=None):
    """Run halo's own launchers with these (BLOCK, num_warps) / (FOLD_TILE, FOLD_WARPS) choices;
    None keeps the shipped one."""
    shipped = halo._launch_config, halo.FOLD_TILE, halo.FOLD_WARPS
    chosen = {"fwd": fwd, "bwd": bwd}
    halo._launch_config = lambda hw, kernel, itemsize: chosen[kernel] or shipped[0](hw, kernel, itemsize)
    halo.FOLD_TILE, halo.FOLD_WARPS = fold or shipped[1:]
    try:
        yield
    finally:
        halo._launch_config, halo.FOLD_TILE, halo.FOLD_WARPS = shipped


def sweep_kernels(sets, dtype, copy_gbps, n_part_default):
    B, C, F, H, W = sets[0][0].shape
    hw, n = H * W, sets[0][0].numel()
    acc = halo._acc_dtype(dtype)[1]
    device = sets[0][0].device
    mask_bytes = sets[0][4].numel() * sets[0][4].element_size()
    rows, ref_out = [], {}
    g = torch.rand(B, device=device, dtype=acc)  # the backward's upstream gradient, one for all
    g_scale = torch.rand((), device=device, dtype=acc)  # and the loss's, as a loss's backward passes it

    def timed(kernel, cfg, nbytes, launch, result, shipped):
        """Time `launch` (one closure per input set) under `cfg`; check `result()` of the first set."""
        state = {}
        with launch_config(**{kernel: cfg}):  # baked into the captured launches
            fns = [lambda s=s, i=i: state.__setitem__(i, launch(s)) for i, s in enumerate(sets)]
            ms = graph_ms(fns, device, budget_s=0.2 if kernel == "fold" else 0.4)
        got = result(state[0])
        ref_out.setdefault(kernel, got)  # the first configuration's output is the yardstick
        err = ((got - ref_out[kernel]).norm() / ref_out[kernel].norm()).item()
        rows.append(row(kernel, *cfg, ms, nbytes, copy_gbps, err, shipped))
        print_row(rows[-1])

    kernels = {  # name: (launch on one input set, its checked result)
        "fwd": (lambda s: halo._partials(s[0], s[1], s[2], s[4], HAND_WEIGHT, SKIP),
                lambda out: torch.stack([out[0].double().sum(1), out[1].double().sum(1)])),
        "bwd": (lambda s: halo.halo_backward(g, s[0], s[2], s[4], HAND_WEIGHT, SKIP, g_scale),
                lambda out: out.float()),
    }
    for kernel, (launch, result) in kernels.items():
        for block in BLOCKS:
            for warps in WARPS:
                if 2 <= block // (32 * warps) <= 64:
                    timed(kernel, (block, warps), 3 * n * dtype.itemsize + mask_bytes, launch, result,
                          (block, warps) == halo._launch_config(hw, kernel, dtype.itemsize))

    part = torch.rand((B, n_part_default), device=device, dtype=acc)
    part_ref = torch.rand((B, n_part_default), device=device, dtype=acc)
    t = torch.rand(B, device=device)
    sync = torch.zeros(1, device=device, dtype=torch.int32)  # the fold leaves it zeroed for the next replay
    fold = lambda s: halo._fold(part, part_ref, sync, head=halo.HEAD_IPA, n=n, acc_torch=acc, t=t,  # noqa: E731
                                beta=600.0, n_stats=5)[2]
    for tile, warps in FOLD:
        timed("fold", (tile, warps), 2 * part.numel() * part.element_size(), fold, lambda out: out.double(),
              (tile, warps) == (halo.FOLD_TILE, halo.FOLD_WARPS))
    return rows


def row(kernel, block, warps, ms, nbytes, copy_gbps, err, shipped):
    gbps = nbytes / (ms * 1e-3) / 1e9
    return {"kernel": kernel, "block": block, "warps": warps, "us": round(ms * 1e3, 1), "gbps": round(gbps),
            "frac_copy": round(gbps / copy_gbps, 3), "rel_err_vs_first": f"{err:.1e}",
            "shipped": "yes" if shipped else ""}


def print_row(r):
    print("  ".join(f"{k}={v}" for k, v in r.items()), flush=True)


def profile_steps(sets):
    """Kernels of one fused step and one torch.compile step (device time per step)."""
    from torch.profiler import ProfilerActivity, profile

    compiled = torch.compile(ops.eager_loss, dynamic=False)
    for name, fn in (("fused", ops.fused_loss), ("compile", compiled)):
        step = ops.step_fn(fn, sets)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        reps = 10
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                step()
            torch.cuda.synchronize()
        kernels = [e for e in prof.key_averages() if e.device_time_total > 0]
        kernels.sort(key=lambda e: -e.device_time_total)
        total = sum(e.device_time_total for e in kernels) / reps
        print(f"\n# {name} step: {total:.1f} us of kernels per step")
        for e in kernels[:12]:
            print(f"  {e.device_time_total / reps:8.1f} us  x{e.count / reps:g}  {e.key[:110]}")
    return compiled


def step_side_by_side(sets, compiled, configs):
    """Whole-step graph replays: the shipped launch configuration, the candidates, compile."""
    device = sets[0][0].device
    steps = {}
    for name, (fwd_cfg, bwd_cfg, fold_tile, fold_warps) in configs.items():
        with launch_config(fwd_cfg, bwd_cfg, (fold_tile, fold_warps)):  # baked into the captured launches
            steps[name] = graph_replayer([ops.step_fn(ops.fused_loss, [s]) for s in sets])
    steps["compile"] = graph_replayer([ops.step_fn(compiled, [s]) for s in sets])
    timings = time_side_by_side(steps, device, min_reps=10, budget_s=1.0, calls=GRAPH_REPLAYS)
    return {k: v[0] for k, v in timings.items()}


def best(rows, kernel):
    r = min((r for r in rows if r["kernel"] == kernel), key=lambda r: r["us"])
    return r["block"], r["warps"]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.tune_halo", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=list(ops.SIZES), default="720p-b8")
    p.add_argument("--dtypes", nargs="+", choices=list(ops.DTYPES), default=["bf16", "fp32"])
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA device (the Triton kernels' launch configurations are tuned on the GPU)")
    device = torch.device("cuda")
    out = Path(args.out_dir) / f"tune-halo-{device_slug(device)}.csv"
    print(f"# copy of 2 GiB: {copy_bandwidth(2 * 2**30, device):.0f} GB/s (each row compares with a copy "
          "of its own size)")
    rows = []
    for dname in args.dtypes:
        rows += tune_one(args.size, dname, device)
        write_csv(out, rows)  # after each dtype: a run cut off keeps what it measured
    print(f"\nwrote {out}")
    print_table(rows, ["dtype", "kernel", "block", "warps", "us", "gbps", "frac_copy", "rel_err_vs_first", "shipped"])
    return 0


def tune_one(size, dname, device):
    """The sweep, the profile and the whole-step comparison for one dtype; the sweep's rows."""
    shape, dtype = ops.SIZES[size], ops.DTYPES[dname]
    sets = ops.make_sets(shape, dtype, device, 2)
    set_bytes = 3 * math.prod(shape) * dtype.itemsize
    copy_gbps = copy_bandwidth(max(set_bytes // 3, 256 * 2**20), device)
    print(f"\n# {size} {dname}: copy {copy_gbps:.0f} GB/s")

    hw = shape[3] * shape[4]
    block, _ = halo._launch_config(hw, "fwd", dtype.itemsize)
    rows = sweep_kernels(sets, dtype, copy_gbps, shape[1] * shape[2] * triton.cdiv(hw, block))
    for r in rows:
        r.update(size=size, dtype=dname, copy_gbps=round(copy_gbps))

    compiled = profile_steps(sets)
    fwd_best, bwd_best = best(rows, "fwd"), best(rows, "bwd")
    # the fold's partial count follows the forward's block: time the best fold for the shipped one
    fold_best = best(rows, "fold")
    shipped = (halo._launch_config(hw, "fwd", dtype.itemsize), halo._launch_config(hw, "bwd", dtype.itemsize),
               halo.FOLD_TILE, halo.FOLD_WARPS)
    configs = {"shipped": shipped, "best kernels": (fwd_best, bwd_best) + fold_best,
               "v0's launch configuration": ((4096, 8), (4096, 8), 2048, 4)}  # NOTES.md's v0 (its fold was one program)
    times = step_side_by_side(sets, compiled, configs)
    nbytes = ops.floor_bytes(shape, dtype)
    print(f"\n# whole step, {size} {dname} (graph replays; floor {nbytes / 1e6:.0f} MB, copy {copy_gbps:.0f} GB/s)")
    for name, ms in times.items():
        gbps = nbytes / (ms * 1e-3) / 1e9
        print(f"  {name:28s} {ms * 1e3:7.1f} us  {gbps:6.0f} GB/s  {gbps / copy_gbps:5.1%} of copy  "
              f"{times['compile'] / ms:4.2f}x compile  {configs.get(name, '')}")
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
