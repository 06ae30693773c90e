"""Fused IPA loss (forward + backward) against eager PyTorch and torch.compile of it.

    python -m benchmarks.ops [--quick] [--sizes 480p-b2 720p-b8] [--dtypes bf16 fp32]
    ipa bench ops [...]

Implementations are timed interleaved, in short blocks (fair on a shared machine). On CUDA the
timed unit is the replay of a CUDA graph of the step, i.e. the GPU's time once the host runs ahead
of it, as it does in a training step (the transformer's kernels queue behind the loss); the
host-inclusive time of one call is reported beside it (`call_ms`). On CPU a call is the unit.
Each configuration times one training-step's worth of loss work: the per-sample HALO errors of
the policy and the frozen reference, the IPA head, and the gradient of the loss w.r.t. the policy
prediction. Three implementations of the same function:
  fused   ipa.ops.flow_ipa_loss (C++ kernels on CPU, Triton on CUDA)
  eager   ipa.ops.reference.flow_ipa_loss on fp32 upcasts (how training scripts write it)
  compile torch.compile of that eager function (default mode, static shapes)
Bytes: the floor is one read of pred, ref, target and mask in the forward and one read of pred,
target and mask plus one write of the gradient in the backward: 6 N s + 2 M bytes for N latent
elements of size s and M mask bytes. Achieved GB/s is that over the median time, reported beside
a device copy measured in the same run. Results: benchmarks/results/ops-<device>.csv and .png.
"""

import argparse
import math

import torch

from ipa.ops import flow_ipa_loss, reference

from .common import (GRAPH_REPLAYS, RESULTS, bounded, copy_bandwidth, device_name, device_slug, graph_replayer,
                     peak_extra_bytes, print_table, time_side_by_side, versions, write_csv)

SIZES = {  # name: (B, C, F, H, W) latents; Wan VAE: 8x space, 4x time (81 frames -> 21)
    "480p-b1": (1, 16, 21, 60, 104),
    "480p-b2": (2, 16, 21, 60, 104),
    "720p-b2": (2, 16, 21, 90, 160),
    "720p-b8": (8, 16, 21, 90, 160),
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
IMPLS = ("fused", "eager", "compile")
BETA = 600.0


def eager_loss(pred, ref, target, t, mask):
    return reference.flow_ipa_loss(pred.float(), target.float(), t, mask, ref_pred=ref.float(), beta=BETA)


def fused_loss(pred, ref, target, t, mask):
    return flow_ipa_loss(pred, target, t, mask, ref_pred=ref, beta=BETA)[0]


MASKS = ("latents", "bool")  # the hand mask in the latents' dtype, or as bool (an ops user's)


def make_sets(shape, dtype, device, n_sets, seed=0, mask_dtype=None):
    """`n_sets` independent input sets; timing rotates through them so caches do not flatter."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, C, F, H, W = shape
    sets = []
    for _ in range(n_sets):
        pred = torch.randn(shape, generator=g).to(device, dtype).requires_grad_()
        ref = (pred.detach() + 0.05 * torch.randn(shape, generator=g).to(device, dtype))
        target = torch.randn(shape, generator=g).to(device, dtype)
        mask = (torch.rand(B, F - 1, H, W, generator=g) > 0.9).to(device, mask_dtype or dtype)
        t = torch.rand(B, generator=g).to(device)
        sets.append((pred, ref, target, t, mask))
    return sets


def step_fn(loss_fn, sets):
    state = {"i": 0}

    def step():
        pred, ref, target, t, mask = sets[state["i"] % len(sets)]
        state["i"] += 1
        loss = loss_fn(pred, ref, target, t, mask)
        return torch.autograd.grad(loss, pred)[0]

    return step


def graphed_steps(fns, sets, impls):
    """{impl: replay()} over one CUDA graph per input set, or None, with the reason printed, when
    an implementation cannot be captured: then all of them are timed per call, alike."""
    try:
        return {impl: graph_replayer([step_fn(fns[impl], [s]) for s in sets]) for impl in impls}
    except Exception as e:  # noqa: BLE001 (whatever stops a capture: a host sync, an unsupported op)
        print(f"# CUDA graph capture failed ({type(e).__name__}: {e}); timing per call instead")
        torch.cuda.synchronize()
        return None


def floor_bytes(shape, dtype, mask_dtype=None):
    n = math.prod(shape)
    B, C, F, H, W = shape
    mask = B * (F - 1) * H * W * (mask_dtype or dtype).itemsize
    return 6 * n * dtype.itemsize + 2 * mask


def run(args, on_rows=lambda rows: None):
    """Rows of the CSV; `on_rows(rows)` after each configuration, so a run cut off keeps them."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    info = {"device": device_name(device), **versions(), "threads": torch.get_num_threads()}
    print(f"# ipa ops benchmark on {info['device']} (torch {info['torch']}, triton {info['triton']}, "
          f"{info['threads']} threads)")
    rows = []
    for size in args.sizes:
        shape = SIZES[size]
        for dname in args.dtypes:
            dtype = DTYPES[dname]
            mask_dtype = torch.bool if args.mask == "bool" else dtype
            set_bytes = 3 * math.prod(shape) * dtype.itemsize
            n_sets = max(1, min(args.max_sets, math.ceil(args.rotate_mb * 2**20 / set_bytes)))
            sets = make_sets(shape, dtype, device, n_sets, mask_dtype=mask_dtype)
            # the copy's buffers several times a GPU's L2 (50-60 MB on H100/H200), so it is HBM's
            min_copy = (256 if device.type == "cuda" else 64) * 2**20
            copy_gbps = copy_bandwidth(max(set_bytes // 3, min_copy), device)
            nbytes = floor_bytes(shape, dtype, mask_dtype)
            fns = {"fused": fused_loss, "eager": eager_loss}
            if "compile" in args.impls:
                torch._dynamo.reset()
                fns["compile"] = torch.compile(eager_loss, dynamic=False)
            grads, steps = {}, {}
            for impl in args.impls:
                grads[impl] = step_fn(fns[impl], sets[:1])().float()  # also compiles
                steps[impl] = step_fn(fns[impl], sets)
            timing = dict(min_reps=args.min_reps, budget_s=args.budget)
            calls = time_side_by_side(steps, device, **timing)
            timings, unit = calls, "call"
            replays = graphed_steps(fns, sets, args.impls) if device.type == "cuda" and args.graphs else None
            if replays is not None:
                timings, unit = time_side_by_side(replays, device, calls=GRAPH_REPLAYS, **timing), "cuda graph"
            peaks = {impl: peak_extra_bytes(step_fn(fns[impl], sets[:1]), device) for impl in args.impls}
            for impl in args.impls:
                (med, p10, p90, reps), peak = timings[impl], peaks[impl]
                err = ((grads[impl] - grads["eager"]).norm() / grads["eager"].norm()).item() \
                    if "eager" in grads else float("nan")
                gbps = nbytes / (med * 1e-3) / 1e9
                rows.append({
                    **info, "size": size, "shape": "x".join(map(str, shape)), "dtype": dname,
                    "mask": args.mask, "impl": impl, "timing": unit, "median_ms": round(med, 3),
                    "p10_ms": round(p10, 3), "p90_ms": round(p90, 3), "reps": reps,
                    "call_ms": round(calls[impl][0], 3), "floor_bytes": nbytes,
                    "gbps": round(gbps, 2), "copy_gbps": round(copy_gbps, 2),
                    "frac_copy": round(gbps / copy_gbps, 3), "peak_extra_mb": round(peak / 2**20, 1),
                    "x_vs_eager": round(timings["eager"][0] / med, 2) if "eager" in timings else "",
                    "x_vs_compile": round(timings["compile"][0] / med, 2) if "compile" in timings else "",
                    "grad_rel_err_vs_eager": f"{err:.1e}",
                })
            on_rows(rows)
            del sets, fns, replays
    return rows


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = sorted({r["dtype"] for r in rows})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4.2), squeeze=False)
    for ax, dname in zip(axes[0], dtypes):
        sub = [r for r in rows if r["dtype"] == dname]
        sizes = list(dict.fromkeys(r["size"] for r in sub))
        impls = list(dict.fromkeys(r["impl"] for r in sub))
        width = 0.8 / len(impls)
        for k, impl in enumerate(impls):
            ys = [next(r["median_ms"] for r in sub if r["size"] == s and r["impl"] == impl) for s in sizes]
            lo = [y - next(r["p10_ms"] for r in sub if r["size"] == s and r["impl"] == impl) for s, y in zip(sizes, ys)]
            hi = [next(r["p90_ms"] for r in sub if r["size"] == s and r["impl"] == impl) - y for s, y in zip(sizes, ys)]
            xs = [i + (k - (len(impls) - 1) / 2) * width for i in range(len(sizes))]
            ax.bar(xs, ys, width, yerr=[lo, hi], label=impl, capsize=2)
        ax.set_xticks(range(len(sizes)), sizes)
        ax.set_yscale("log")
        ax.set_ylabel("forward+backward, ms (median, p10-p90)")
        ax.set_title(f"IPA loss, {dname}")
        ax.legend()
    fig.suptitle(f"ipa.ops on {rows[0]['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(prog="ipa bench ops", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one size (480p-b2, bf16), short budget: a smoke run")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=None)
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["bf16", "fp32"])
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--mask", choices=MASKS, default="latents",
                   help="hand mask dtype: the latents' or bool")
    p.add_argument("--budget", type=bounded(float, 0), default=2.0, help="seconds of timing per implementation")
    p.add_argument("--min-reps", type=bounded(int, 1), default=5)
    p.add_argument("--rotate-mb", type=bounded(float, 0, strict=True), default=512,
                   help="rotate input sets totalling this size")
    p.add_argument("--max-sets", type=bounded(int, 1), default=8)
    p.add_argument("--no-graphs", dest="graphs", action="store_false",
                   help="on CUDA, time calls (host dispatch included) instead of CUDA-graph replays")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.dtypes, args.budget, args.min_reps = ["480p-b2"], ["bf16"], 1.0, 3
    args.sizes = args.sizes or list(SIZES)
    from pathlib import Path

    out = Path(args.out_dir)
    stem = (f"ops-{device_slug(torch.device(args.device))}" + ("-boolmask" if args.mask == "bool" else "")
            + ("-quick" if args.quick else ""))
    rows = run(args, on_rows=lambda rows: write_csv(out / f"{stem}.csv", rows))
    plot(rows, out / f"{stem}.png")
    print_table(rows, ["size", "dtype", "impl", "timing", "median_ms", "p10_ms", "p90_ms", "call_ms", "gbps",
                       "frac_copy", "peak_extra_mb", "x_vs_eager", "x_vs_compile", "grad_rel_err_vs_eager"])
    print(f"wrote {out / (stem + '.csv')} and {out / (stem + '.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
