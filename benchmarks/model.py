"""One IPA training step against one SFT step, per reference mode and attention backend.

    python -m benchmarks.model [--quick] [--family wan-vace] [--backends native ...]
    python -m benchmarks.model --gpu-block          # one Wan-14B-sized block at 32,760 tokens
    ipa bench model [...]

A step is what the trainer does per micro-batch:
  sft              policy forward + backward, flow-matching loss (HALO-weighted)
  ipa-copy         + forward of a second, frozen model instance (the `copy` reference)
  ipa-adapter      + forward of the same LoRA policy with adapters disabled
  ipa-precomputed  + a lookup of stored reference errors (no reference model)
The policy is LoRA on attention q/k/v as in the paper; loss via ipa.ops (flow_sft_loss /
flow_ipa_loss). Time: median of interleaved repeats (ratios measured side by side in one run).
Memory: `weights_mb` (all parameters held: policy + reference) plus `peak_step_mb` (allocations
of one step beyond what was live before it); `total_mb` is their sum. Targets (issue 4): IPA step
<= 1.4x SFT with an online reference, <= 1.05x precomputed; adapter <= 1.05x SFT total memory.

Default: the tiny diffusers configs on CPU. `--gpu-block` builds one WanTransformerBlock
(dim 5120, 40 heads, ffn 13824, bf16) at 81 frames 480p (21 x 30 x 52 = 32,760 tokens) on CUDA and
also reports the attention kernel's achieved TFLOP/s against the GPU's bf16 dense peak.
Results: benchmarks/results/model-<device>.csv and .png.
"""

import argparse
import re
from pathlib import Path

import torch
from diffusers.models.attention_dispatch import attention_backend, dispatch_attention_fn

from ipa.models import (Reference, add_lora, adapters_disabled, available_backends,
                        build_transformer, flow_draw, forward, lora_layers, precompute_reference_errors,
                        synthetic_batch)
from ipa.models.attention import DIFFUSERS_NAMES
from ipa.ops import flow_ipa_loss, flow_sft_loss

from .common import (RESULTS, bounded, device_name, device_slug, peak_extra_bytes, print_table,
                     time_side_by_side, versions, write_csv)

MODES = ("sft", "ipa-copy", "ipa-adapter", "ipa-precomputed")
SEED = 0
# Dense bf16 tensor-core peaks from the vendor's data sheets, the form factor first: an H100 PCIe
# (756) or NVL (835) runs lower clocks than the SXM parts (989) that share its name.
BF16_PEAK_TFLOPS = [(r"h100.*pcie", 756.0), (r"h[12]00.*nvl", 835.0), (r"h100|h200|gh200", 989.0),
                    (r"a100", 312.0), (r"l40s", 362.0)]


def bf16_peak_tflops(gpu_name):
    """Dense bf16 peak of the GPU named `gpu_name` (torch.cuda.get_device_name), or None if unknown."""
    name = gpu_name.lower()
    return next((peak for pattern, peak in BF16_PEAK_TFLOPS if re.search(pattern, name)), None)


def _nbytes(*modules):
    seen, total = set(), 0
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel() * p.element_size()
    return total


def model_steps(family, backend, dtype, device, batch_size, frames, size, rank):
    """{mode: step()} on tiny models, plus {mode: bytes of parameters held}."""
    kw = dict(dtype=dtype, attention_backend=backend, seed=SEED, device=device)
    policy = add_lora(build_transformer(family, "tiny", **kw), rank=rank, alpha=rank)
    batch = synthetic_batch(family, policy.config, batch_size, frames, size, size, seed=1, device=device)
    batch["x0"] = batch["x0"].to(dtype)
    draw = flow_draw(batch, seed=SEED)
    x_t, t, target, mask = draw["noisy"], draw["t"], draw["target"], batch["hand_mask"]
    refs = {"ipa-copy": Reference.create("copy", policy=policy),
            "ipa-adapter": Reference.create("adapter", policy=policy)}
    ref_model = refs["ipa-copy"].model.requires_grad_(False)
    store = precompute_reference_errors(ref_model, family, [batch], n_draws=1, seed=SEED)
    refs["ipa-precomputed"] = Reference.create("precomputed", store=store)

    def step(mode):
        def run():
            # as the trainer does: the reference first, so its activations are gone before the policy's
            err_ref = None if mode == "sft" else refs[mode].error(batch, x_t, t, target, mask)
            pred = forward(policy, family, batch, x_t, t)
            if mode == "sft":
                loss, _ = flow_sft_loss(pred, target, mask)
            else:
                loss, _ = flow_ipa_loss(pred, target, t, mask, ref_error=err_ref)
            loss.backward()
            policy.zero_grad(set_to_none=True)
        return run

    held = {m: _nbytes(policy) for m in MODES}
    held["ipa-copy"] = _nbytes(policy, ref_model)
    return {m: step(m) for m in MODES}, held


def block_steps(device, tokens_fhw=(21, 30, 52), text_len=512, rank=128, dim=5120, heads=40, ffn=13824):
    """{mode: step()} on one Wan-14B-sized transformer block in bf16, plus parameter bytes."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed, WanTransformerBlock

    dtype = torch.bfloat16
    torch.manual_seed(SEED)

    def make():  # initialized on the device: a CPU init of 351 M parameters takes seconds of a lease
        with torch.device(device):
            return WanTransformerBlock(dim, ffn, heads, "rms_norm_across_heads", True, 1e-6, None).to(dtype)

    policy = make()
    ref_block = make().requires_grad_(False).eval()
    ref_block.load_state_dict(policy.state_dict())  # same weights, a second instance
    add_lora(policy, rank=rank, alpha=rank)
    layers = lora_layers(policy)
    F, H, W = tokens_fhw
    # The block is bare, so its rotary table is ours to place: diffusers keeps it in a buffer of
    # the embedding module, which a whole model would have moved along with itself.
    rope_embed = WanRotaryPosEmbed(dim // heads, (1, 2, 2), 1024).to(device)
    rope = rope_embed(torch.empty(1, 16, F, 2 * H, 2 * W, device=device))
    S = F * H * W
    g = torch.Generator(device).manual_seed(1)
    x = torch.randn(1, S, dim, device=device, dtype=dtype, generator=g)
    ctx = torch.randn(1, text_len, dim, device=device, dtype=dtype, generator=g)
    temb = torch.randn(1, 6, dim, device=device, dtype=torch.float32, generator=g) * 0.1
    target = torch.randn(1, S, dim, device=device, dtype=dtype, generator=g)
    t = torch.tensor([0.5], device=device)
    with torch.no_grad():
        err_ref = (ref_block(x, ctx, temb, rope).float() - target.float()).square().mean().reshape(1)

    def as5d(y):  # [1, S, D] -> [1, D, 1, 1, S] so the HALO ops see one latent "frame" per token
        return y.transpose(1, 2).unsqueeze(2).unsqueeze(2)

    def step(mode):
        def run():
            pred = policy(x, ctx, temb, rope)
            if mode == "sft":
                loss, _ = flow_sft_loss(as5d(pred), as5d(target), skip_frames=0)
            else:
                if mode == "ipa-copy":
                    with torch.no_grad():
                        ref_pred = ref_block(x, ctx, temb, rope)
                elif mode == "ipa-adapter":
                    with torch.no_grad(), adapters_disabled(policy, layers):
                        ref_pred = policy(x, ctx, temb, rope)
                if mode == "ipa-precomputed":
                    loss, _ = flow_ipa_loss(as5d(pred), as5d(target), t, skip_frames=0, ref_error=err_ref)
                else:
                    loss, _ = flow_ipa_loss(as5d(pred), as5d(target), t, skip_frames=0, ref_pred=as5d(ref_pred))
            loss.backward()
            policy.zero_grad(set_to_none=True)
        return run

    held = {m: _nbytes(policy) for m in MODES}
    held["ipa-copy"] = _nbytes(policy, ref_block)
    return {m: step(m) for m in MODES}, held, S


def attention_tflops(device, backend, S=32760, heads=40, head_dim=128):
    """Achieved TFLOP/s of one bf16 self-attention forward at S tokens through diffusers' dispatcher."""
    q, k, v = (torch.randn(1, S, heads, head_dim, device=device, dtype=torch.bfloat16) for _ in range(3))
    fn = lambda: dispatch_attention_fn(q, k, v, backend=DIFFUSERS_NAMES[backend])  # noqa: E731
    med = time_side_by_side({"attn": fn}, device, min_reps=5, budget_s=2.0)["attn"][0]
    return 4 * S * S * head_dim * heads / (med * 1e-3) / 1e12


def measure(steps, held, device, args):
    timings = time_side_by_side(steps, device, min_reps=args.min_reps, budget_s=args.budget)
    out = {}
    for mode, fn in steps.items():
        med, p10, p90, reps = timings[mode]
        peak = peak_extra_bytes(fn, device)
        out[mode] = {"median_ms": med, "p10_ms": p10, "p90_ms": p90, "reps": reps,
                     "weights_mb": held[mode] / 2**20, "peak_step_mb": peak / 2**20,
                     "total_mb": (held[mode] + peak) / 2**20}
    return out


def rows_for(result, info, extra):
    sft = result["sft"]
    rows = []
    for mode, r in result.items():
        rows.append({**info, **extra, "mode": mode,
                     "median_ms": round(r["median_ms"], 3), "p10_ms": round(r["p10_ms"], 3),
                     "p90_ms": round(r["p90_ms"], 3), "reps": r["reps"],
                     "x_time_vs_sft": round(r["median_ms"] / sft["median_ms"], 3),
                     "weights_mb": round(r["weights_mb"], 2), "peak_step_mb": round(r["peak_step_mb"], 2),
                     "total_mb": round(r["total_mb"], 2),
                     "x_mem_vs_sft": round(r["total_mb"] / sft["total_mb"], 3)})
    return rows


def run_tiny(args, device, info, on_rows):
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    backends = args.backends or available_backends(device, dtype)
    rows = []
    for backend in backends:
        steps, held = model_steps(args.family, backend, dtype, device, args.batch_size, args.frames,
                                  args.size, args.rank)
        extra = {"workload": f"tiny {args.family} B{args.batch_size} F{args.frames} {args.size}x{args.size}",
                 "dtype": args.dtype, "attention": backend, "lora_rank": args.rank, "attn_tflops": ""}
        rows += rows_for(measure(steps, held, device, args), info, extra)
        on_rows(rows)
    return rows


def run_block(args, device, info, on_rows):
    rows = []
    backends = args.backends or available_backends(device, torch.bfloat16)
    peak = bf16_peak_tflops(torch.cuda.get_device_name(device))
    steps, held, S = block_steps(device, rank=args.rank)  # built once: the backend is read at call time
    for backend in backends:
        with attention_backend(DIFFUSERS_NAMES[backend]):  # the bare block has no set_attention_backend
            result = measure(steps, held, device, args)
        tflops = attention_tflops(device, backend)
        extra = {"workload": f"Wan-14B block, {S} tokens", "dtype": "bf16", "attention": backend,
                 "lora_rank": args.rank,
                 "attn_tflops": f"{tflops:.0f}" + (f" ({tflops / peak:.0%} of {peak:.0f})" if peak else "")}
        rows += rows_for(result, info, extra)
        on_rows(rows)
    return rows


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(dict.fromkeys(r["attention"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(backends)
    for k, b in enumerate(backends):
        sub = [r for r in rows if r["attention"] == b]
        xs = [i + (k - (len(backends) - 1) / 2) * width for i in range(len(sub))]
        axes[0].bar(xs, [r["median_ms"] for r in sub], width, label=b,
                    yerr=[[r["median_ms"] - r["p10_ms"] for r in sub], [r["p90_ms"] - r["median_ms"] for r in sub]],
                    capsize=2)
        axes[1].bar(xs, [r["weights_mb"] for r in sub], width, label=f"{b}: weights")
        axes[1].bar(xs, [r["peak_step_mb"] for r in sub], width, bottom=[r["weights_mb"] for r in sub],
                    label=f"{b}: step peak", alpha=0.6)
        for x, r in zip(xs, sub):
            axes[0].text(x, r["median_ms"], f"{r['x_time_vs_sft']:.2f}x", ha="center", va="bottom", fontsize=8)
            axes[1].text(x, r["total_mb"], f"{r['x_mem_vs_sft']:.2f}x", ha="center", va="bottom", fontsize=8)
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    for ax, title in zip(axes, ("step time, ms (median, p10-p90)", "memory, MB (params held + step peak)")):
        ax.set_xticks(range(len(modes)), modes)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"ipa.models: {rows[0]['workload']} on {rows[0]['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(prog="ipa bench model", description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu-block", action="store_true", help="one Wan-14B-sized block at 32,760 tokens (CUDA)")
    p.add_argument("--quick", action="store_true", help="short budget: a smoke run")
    p.add_argument("--family", default="wan-vace", choices=["wan-vace", "wan", "wan-animate"])
    p.add_argument("--backends", nargs="+", default=None, help="attention backends (default: all that can run)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="tiny models' dtype")
    p.add_argument("--batch-size", type=bounded(int, 1), default=2)
    p.add_argument("--frames", type=bounded(int, 1), default=5, help="latent frames (tiny models)")
    p.add_argument("--size", type=bounded(int, 1), default=16, help="latent height = width (tiny models)")
    p.add_argument("--rank", type=bounded(int, 1), default=None, help="LoRA rank (default 16 tiny, 128 block)")
    p.add_argument("--budget", type=bounded(float, 0), default=3.0, help="seconds of timing per mode")
    p.add_argument("--min-reps", type=bounded(int, 1), default=10)
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.quick:
        args.budget, args.min_reps = 0.5, 3
    if args.gpu_block:
        if not torch.cuda.is_available():
            print("ipa bench model --gpu-block: no CUDA device here; skipped (run it on a GPU machine)")
            return 0
        device = torch.device("cuda")
        args.rank = args.rank or 128
    else:
        device = torch.device("cuda" if torch.cuda.is_available() and args.dtype == "bf16" else "cpu")
        args.rank = args.rank or 16
    info = {"device": device_name(device), **versions(), "threads": torch.get_num_threads()}
    import diffusers
    import peft
    info.update(diffusers=diffusers.__version__, peft=peft.__version__)
    print(f"# ipa model-step benchmark on {info['device']} (torch {info['torch']}, diffusers "
          f"{info['diffusers']}, {info['threads']} threads)")
    out = Path(args.out_dir)
    stem = f"model-{device_slug(device)}" + ("-block" if args.gpu_block else "") + ("-quick" if args.quick else "")
    # the CSV is rewritten after each backend: a run cut off by a time limit keeps what it measured
    save = lambda rows: write_csv(out / f"{stem}.csv", rows)  # noqa: E731
    rows = (run_block if args.gpu_block else run_tiny)(args, device, info, save)
    plot(rows, out / f"{stem}.png")
    print_table(rows, ["workload", "attention", "mode", "median_ms", "p10_ms", "p90_ms", "x_time_vs_sft",
                       "weights_mb", "peak_step_mb", "total_mb", "x_mem_vs_sft", "attn_tflops"])
    print(f"wrote {out / (stem + '.csv')} and {out / (stem + '.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
