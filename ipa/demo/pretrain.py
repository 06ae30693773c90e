"""Pretrain the demo's base model: a tiny WanVACETransformer3DModel, plain flow matching.

    python -m ipa.demo.pretrain --minutes 8 --out ipa/demo/assets/base

The data are renderer clips of conditions `PRETRAIN_SEEDS` (disjoint from the experiment's).
Loss: MSE between predicted and true velocity (noise - x0) at s ~ U(0, 1), no hand weighting.
Trained for a fixed wall-clock budget, so the model is decent on bodies but imperfect on the
small fingers, like real models; the script prints hand-region vs non-hand PSNR of samples on
held-out conditions. The result is a diffusers folder (`save_pretrained`), a few MB.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from . import metrics, task

PRETRAIN_SEEDS = range(1_000_000, 1_002_048)
EVAL_SEEDS = range(2_000_000, 2_000_016)


def build(seed: int = 0):
    from ipa.models import build_transformer

    return build_transformer("wan-vace", dict(task.MODEL_CONFIG), dtype=torch.float32,
                             attention_backend="native", seed=seed)


def _batch(videos, poses, idx, gen):
    x0 = torch.stack([task.encode(videos[i]) for i in idx])
    control = torch.stack([task.control_from_pose(poses[i]) for i in idx])
    B = len(idx)
    s = torch.rand(B, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    xt = (1 - s.view(-1, 1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1, 1) * noise
    text = task.text_embedding()[None].expand(B, -1, -1)
    return {"x0": x0, "control": control, "text_emb": text}, xt, s, noise - x0


def pretrain(out, *, minutes: float = 8.0, batch: int = 8, lr: float = 1e-3, n_clips: int = len(PRETRAIN_SEEDS),
             seed: int = 0, init=None, log=print) -> dict:
    """Train for `minutes` of wall clock (from `init`, a saved folder, to continue a run); save to `out`."""
    from ipa.models import model_inputs

    torch.manual_seed(seed)
    t0 = time.time()
    seeds = list(PRETRAIN_SEEDS)[:n_clips]
    clips = [task.motion(s) for s in seeds]
    from .render import render_video

    rendered = [render_video(p) for p in clips]
    videos, poses = [v for v, _ in rendered], [p for _, p in rendered]
    log(f"rendered {len(videos)} clips in {time.time() - t0:.0f} s")
    if init:
        from ipa.models import build_transformer

        model = build_transformer("wan-vace", str(init), dtype=torch.float32, attention_backend="native")
    else:
        model = build(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    cfg = dict(model.config)
    step, losses, start = 0, [], time.time()
    while time.time() - start < minutes * 60:
        idx = torch.randint(len(videos), (batch,), generator=gen).tolist()
        b, xt, s, target = _batch(videos, poses, idx, gen)
        lr_now = lr * min(1.0, (step + 1) / 50)  # short warmup
        for g in opt.param_groups:
            g["lr"] = lr_now
        pred = model(**model_inputs("wan-vace", b, xt, s, config=cfg))[0]
        loss = torch.mean((pred - target) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            log(f"step {step}  loss {np.mean(losses[-100:]):.4f}  {time.time() - start:.0f} s")
    model.eval()
    out = Path(out)
    model.save_pretrained(out)
    prev = json.loads((Path(init) / "pretrain.json").read_text()).get("steps", 0) if init and (Path(init) / "pretrain.json").is_file() else 0
    result = {"steps": prev + step, "batch": batch, "lr": lr, "minutes": minutes, "final_loss": float(np.mean(losses[-100:])),
              **evaluate(model)}
    (out / "pretrain.json").write_text(json.dumps(result, indent=1))
    log(json.dumps(result))
    return result


def evaluate(model, seeds=EVAL_SEEDS) -> dict:
    """Mean hand PSNR/SSIM and non-hand PSNR of one sample per held-out condition."""
    conds = [task.condition(s) for s in seeds]
    lat = metrics.sample_videos(model, conds, [s for s in seeds])
    return metrics.mean_scores([metrics.score(z, c) for z, c in zip(lat, conds)])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ipa.demo.pretrain", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="ipa/demo/assets/base")
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clips", type=int, default=len(PRETRAIN_SEEDS))
    p.add_argument("--init", default=None, help="continue from this saved model folder")
    a = p.parse_args(argv)
    pretrain(a.out, minutes=a.minutes, batch=a.batch, lr=a.lr, n_clips=a.clips, init=a.init,
             log=lambda m: print(m, flush=True))


if __name__ == "__main__":
    main()
