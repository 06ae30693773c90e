"""`ipa generate`: K self-generated candidates per condition with the policy.

The sampler is the Euler flow-matching loop of WanVACEPipeline (FlowMatchEulerDiscreteScheduler,
optional classifier-free guidance), run on precomputed conditions so that many (condition,
candidate) pairs go through the transformer in one batch. Under `torchrun`, conditions are sharded
over ranks (`conditions[rank::world]`); every candidate's seed is a function of (seed, condition
id, candidate index) only, so outputs do not depend on the number of ranks or the batch size.

    OUT/run.json                         settings + the conditions dataset path
    OUT/<condition>/cand-<k>/video.mp4   decoded candidate (the reference frame left out)
    OUT/<condition>/cand-<k>/latents.safetensors   "x0": latents shaped like the condition's x0
                                                  (its reference latent in frame 0, when it has one)
    OUT/<condition>/cand-<k>/meta.json   condition, candidate, seed, sampler settings (written last:
                                         a candidate with meta.json is complete; reruns skip it)

A rerun with other sampling settings (`SAMPLE_SETTINGS`) is refused: it would skip candidates
sampled the old way and label them with the new run.json.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

CANDIDATE_FILES = ("video.mp4", "latents.safetensors", "meta.json")


def candidate_seed(seed: int, condition: str, k: int) -> int:
    """A 63-bit seed for candidate `k` of `condition` (stable across ranks, batching and runs)."""
    digest = hashlib.sha256(f"{seed}/{condition}/{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def candidate_dir(out, condition: str, k: int) -> Path:
    return Path(out) / condition / f"cand-{k}"


def _dist():
    """(rank, world) under torchrun (process group initialised here), else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():  # before NCCL's first collective: one GPU per rank, not all on cuda:0
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


@torch.no_grad()
def sample(model, cond: dict, seeds: list[int], *, steps: int, shift: float = 3.0, guidance: float = 1.0,
           negative_emb: torch.Tensor | None = None, conditioning_scale: float = 1.0) -> torch.Tensor:
    """Euler flow-matching samples for a batch of conditions.

    Args:
        model: a WanVACETransformer3DModel.
        cond: ``control`` [B, 96, F, h, w], ``text_emb`` [B, L, D] and ``x0`` (for the latent shape).
        seeds: one per batch row: the initial noise of row b is drawn from its own generator.
        negative_emb: [L', D] text embedding of the negative prompt (needed when guidance > 1).
    Returns the final latents [B, C, F, h, w] (float32, on the model's device).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ipa.models import model_inputs

    # model.dtype, not the first parameter's: diffusers keeps Wan's scale_shift_table (first) in fp32
    device, dtype = next(model.parameters()).device, model.dtype
    x0 = cond["x0"]
    B = x0.shape[0]
    if len(seeds) != B:
        raise ValueError(f"seeds must have one entry per batch row ({B}), got {len(seeds)}")
    latents = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds])
    latents = latents.to(device)
    batch = {"control": cond["control"].to(device), "text_emb": cond["text_emb"].to(device)}
    uncond = None
    if guidance > 1.0:
        if negative_emb is None:
            raise ValueError("guidance > 1 needs negative_emb (the negative prompt's embedding)")
        uncond = {**batch, "text_emb": negative_emb.to(device)[None].expand(B, -1, -1)}
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(steps, device=device)
    cfg = dict(model.config)
    for t in scheduler.timesteps:
        s = (t / 1000.0).expand(B)
        kw = model_inputs("wan-vace", batch, latents.to(dtype), s, config=cfg)
        v = model(**kw, control_hidden_states_scale=torch.full((len(cfg["vace_layers"]),), conditioning_scale,
                                                               device=device, dtype=dtype))[0].float()
        if uncond is not None:
            kw = model_inputs("wan-vace", uncond, latents.to(dtype), s, config=cfg)
            v_u = model(**kw, control_hidden_states_scale=torch.full((len(cfg["vace_layers"]),), conditioning_scale,
                                                                     device=device, dtype=dtype))[0].float()
            v = v_u + guidance * (v - v_u)
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
    return latents.float()


def _save_candidate(folder: Path, latents: torch.Tensor, frames, fps: float, meta: dict) -> None:
    from safetensors.torch import save_file

    from ipa.data.video import write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    write_mp4(folder / "video.mp4", frames, fps)
    part = folder / "latents.safetensors.part"
    save_file({"x0": latents.contiguous().cpu()}, str(part))
    os.replace(part, folder / "latents.safetensors")
    tmp = folder / "meta.json.part"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, folder / "meta.json")  # last: marks the candidate complete


# What a candidate is made with: a rerun into the same folder must match these to reuse its finished
# candidates. (More candidates, another batch size or rank count reuse them: outputs do not depend on
# those.)
SAMPLE_SETTINGS = ("conditions", "model", "lora", "steps", "seed", "shift", "guidance", "negative_emb", "dtype")


def _check_rerun(out: Path, settings: dict) -> None:
    """Refuse to mix candidates of other settings into `out` (a rerun skips finished ones)."""
    run_json = out / "run.json"
    if not run_json.is_file() or not any(out.glob("*/cand-*/meta.json")):
        return
    before = json.loads(run_json.read_text())
    differ = [f"{k}: {before[k]!r} there, {settings[k]!r} here" for k in SAMPLE_SETTINGS
              if k in before and before[k] != settings[k]]  # keys an older run.json lacks are not compared
    if differ:
        raise ValueError(f"out: {str(out)!r} holds candidates generated with other settings ({'; '.join(differ)}); "
                         "a rerun would keep them as they are: use another --out, or delete the folder to start over")


def generate(model, conditions, out, *, candidates: int = 4, steps: int = 30, seed: int = 0, vae=None,
             batch_size: int = 4, shift: float = 3.0, guidance: float = 1.0, negative_emb=None, lora=None,
             dtype=torch.bfloat16, device=None, progress: bool = True) -> Path:
    """Sample `candidates` videos for every condition of the dataset `conditions` into `out`.

    `model`: local WanVACE transformer/pipeline folder, "tiny", or a model instance. `vae`: local
    AutoencoderKLWan folder (default: the model pipeline's vae/, else the one the conditions were
    prepared with). `lora`: an exported LoRA folder to sample with (the trained policy).
    """
    from tqdm.auto import tqdm

    from ipa.data import ShardDataset
    from ipa.data.encode import LatentCodec, load_text_embedding, load_vae
    from ipa.data.prepare import condition_dir
    from ipa.data.shards import atomic_write_text
    from ipa.models import build_transformer, load_lora

    if candidates < 1 or steps < 1 or batch_size < 1:
        raise ValueError(f"candidates, steps and batch_size must be >= 1, got {candidates}, {steps}, {batch_size}")
    if guidance > 1 and negative_emb is None:
        raise ValueError(f"guidance {guidance} > 1 needs negative_emb (--negative-emb: the negative prompt's "
                         "cached embedding)")
    rank, world = _dist()
    if device is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    ds = ShardDataset(conditions, verify=False)
    if ds.info.get("family", "wan-vace") != "wan-vace":
        raise ValueError(f"conditions {str(conditions)!r} are for family {ds.info.get('family')!r}; "
                         "ipa generate samples wan-vace conditions")
    source = str(model) if isinstance(model, (str, Path)) else getattr(model, "ipa_build", {}).get("source", "instance")
    out = Path(out)
    has_ref = bool(ds.info.get("reference"))
    settings = dict(conditions=str(Path(conditions).resolve()), model=source, lora=str(lora) if lora else None,
                    candidates=candidates, steps=steps, seed=seed, shift=shift, guidance=guidance,
                    negative_emb=str(negative_emb) if isinstance(negative_emb, (str, Path)) else None,
                    dtype=str(dtype if isinstance(model, (str, Path)) else model.dtype).removeprefix("torch."),
                    reference=has_ref, world_size=world)
    _check_rerun(out, settings)  # before the model loads: a refusal costs nothing
    if isinstance(model, (str, Path)):
        model = build_transformer("wan-vace", source, dtype=dtype, device=device, seed=0)
    if lora is not None:
        load_lora(model, lora)
    model.eval()
    vae_path = vae or (Path(source) / "vae" if source not in ("tiny", "instance") and (Path(source) / "vae").is_dir()
                       else ds.info.get("vae"))
    if vae_path is None:
        raise ValueError("no VAE to decode with: pass vae (a local AutoencoderKLWan folder)")
    codec = LatentCodec(vae_path if not isinstance(vae_path, (str, Path)) else
                        load_vae(vae_path, dtype=torch.float32, device=device))
    neg = load_text_embedding(negative_emb) if isinstance(negative_emb, (str, Path)) else negative_emb

    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:  # atomic: the other ranks may be reading the previous one (_check_rerun)
        atomic_write_text(out / "run.json", json.dumps(settings, indent=1))
    mine = list(range(rank, len(ds), world))
    todo = [(i, k) for i in mine for k in range(candidates)
            if not (candidate_dir(out, ds.records[i]["id"], k) / "meta.json").is_file()]
    bar = tqdm(total=len(todo), desc=f"generating (rank {rank})", unit="video", disable=not progress or rank != 0)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        samples = {i: ds[i] for i, _ in chunk}
        cond = {key: torch.stack([samples[i][key] for i, _ in chunk]) for key in ("x0", "control", "text_emb")}
        ids = [samples[i]["sample_id"] for i, _ in chunk]
        seeds = [candidate_seed(seed, sid, k) for sid, (_, k) in zip(ids, chunk)]
        latents = sample(model, cond, seeds, steps=steps, shift=shift, guidance=guidance, negative_emb=neg).cpu()
        for row, ((i, k), sid, s) in enumerate(zip(chunk, ids, seeds)):
            lat = latents[row]
            if has_ref:
                # The reference slot is an input, not generated video: keep the encoded reference
                # there so a curated sample is shaped and conditioned exactly like a prepared one.
                lat = torch.cat([cond["x0"][row, :, :1].float(), lat[:, 1:]], dim=1)
            frames = codec.decode(lat[:, 1:] if has_ref else lat)
            side = condition_dir(conditions, sid) / "meta.json"
            fps = json.loads(side.read_text()).get("fps", 16.0) if side.is_file() else 16.0
            _save_candidate(candidate_dir(out, sid, k), lat.to(samples[i]["x0"].dtype), frames, fps,
                            {**settings, "base_seed": seed, "condition": sid, "candidate": k, "seed": s})
        bar.update(len(chunk))
    bar.close()
    if world > 1:
        torch.distributed.barrier()  # every rank done before anyone reads the folder
        torch.distributed.destroy_process_group()
    return out


def register(sub):
    p = sub.add_parser("generate")
    p.add_argument("--model", required=True, help="local WanVACE transformer or pipeline folder ('tiny' for tests)")
    p.add_argument("--conditions", required=True, help="dataset written by `ipa data prepare`")
    p.add_argument("--out", required=True)
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae", help="local AutoencoderKLWan folder (default: the model's vae/ or the conditions')")
    p.add_argument("--lora", help="exported LoRA folder to sample with")
    p.add_argument("--batch-size", type=int, default=4, help="videos per transformer call")
    p.add_argument("--shift", type=float, default=3.0, help="flow shift (Wan: 3 for 480p, 5 for 720p)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--negative-emb", help="cached negative-prompt embedding, needed when --guidance > 1")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    p.set_defaults(func=_run)


def _run(args):
    out = generate(args.model, args.conditions, args.out, candidates=args.candidates, steps=args.steps,
                   seed=args.seed, vae=args.vae, batch_size=args.batch_size, shift=args.shift,
                   guidance=args.guidance, negative_emb=args.negative_emb, lora=args.lora,
                   dtype=getattr(torch, args.dtype))
    print(f"candidates in {out}")
