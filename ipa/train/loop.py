"""The training loop: data -> (noise, t) draws -> policy and reference -> fused loss -> DeepSpeed step.

Noise and timesteps come from `ipa.models.flow_draw`, keyed by (run seed, sample id, draw index):
with `reference.draws = K` the draw is `epoch % K` (the draws `ipa precompute-reference` stored);
otherwise it is the micro-step counter, unique per step. Together with the step-keyed data order
this makes a resumed run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ipa import models
from ipa.data import ResumableSampler, ShardDataset, collate
from ipa.ops import flow_dpo_loss, flow_ipa_loss, flow_sft_loss

from . import checkpoint, engines
from .config import TrainConfig, dump, validate
from .logging import RunLog, write_config


def init_distributed():
    """Process group from the launcher's environment (torchrun / deepspeed), or a 1-process one."""
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and local >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local}: this machine has {torch.cuda.device_count()} CUDA device(s), one "
                         "per rank (launch at most that many processes per node)")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, verbose=False)
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def to_device(batch, device, dtype):
    """Tensors to `device`, floating ones to the model's compute `dtype`: shards may hold fp32 latents
    for a bf16 model, and the transformer takes its inputs in its own dtype."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, dtype=dtype if v.is_floating_point() else None, non_blocking=True)
        out[k] = v
    return out


def flow_inputs(cfg: TrainConfig, batch, draw: int):
    o = cfg.objective
    return models.flow_draw(batch, seed=cfg.run.seed, sampling=o.timestep_sampling, shift=o.shift,
                            draws=[draw] * len(batch["sample_id"]), logit_mean=o.logit_mean, logit_std=o.logit_std)


def step_loss(cfg: TrainConfig, engine, reference, batch, draw: int):
    """(loss, metrics) of one micro batch."""
    o, family = cfg.objective, cfg.model.family
    batch["draw"] = torch.full((len(batch["sample_id"]),), draw, dtype=torch.long)  # the precomputed lookup key
    d = flow_inputs(cfg, batch, draw)
    mask = batch.get("hand_mask")
    kw = {"hand_weight": o.hand_weight, "skip_frames": o.skip_frames}
    if o.name == "sft":
        pred = models.forward(engine, family, batch, d["noisy"], d["t"])
        return flow_sft_loss(pred, d["target"], mask, **kw)
    # The reference runs first: its activations are freed before the policy's are built, so the step
    # peaks at SFT's memory plus one prediction.
    if o.name == "ipa":
        if reference.mode == "precomputed":
            ref = {"ref_error": reference.error(batch, d["noisy"], d["t"], d["target"], mask, **kw)}
        else:
            ref = {"ref_pred": reference.predict(batch, d["noisy"], d["t"])}
        pred = models.forward(engine, family, batch, d["noisy"], d["t"])
        return flow_ipa_loss(pred, d["target"], d["t"], mask, beta=o.beta, **ref, **kw)
    # dpo (`validate` checked the data hold x0_loser): flow_draw gave the loser its winner's noise and t
    noisy_l, target_l = d["noisy_loser"], d["target_loser"]
    if reference.mode == "precomputed":
        refs = {"ref_error_w": reference.error(batch, d["noisy"], d["t"], d["target"], mask, **kw),
                "ref_error_l": reference.error(batch, noisy_l, d["t"], target_l, mask, loser=True, **kw)}
    else:
        refs = {"ref_pred_w": reference.predict(batch, d["noisy"], d["t"]),
                "ref_pred_l": reference.predict(batch, noisy_l, d["t"])}
    pred = models.forward(engine, family, batch, d["noisy"], d["t"])
    pred_l = models.forward(engine, family, batch, noisy_l, d["t"])
    return flow_dpo_loss(pred, pred_l, d["target"], target_l, mask, mask, beta=o.beta, **refs, **kw)


def _mean_over_ranks(values: dict) -> dict:
    """Scalars averaged over ranks. The reduction runs where the values are: NCCL reduces only
    CUDA tensors (a CPU tensor there raises), gloo only CPU ones."""
    names = sorted(values)
    t = torch.stack([values[k].detach().float().reshape(()) for k in names])
    dist.all_reduce(t)
    return dict(zip(names, (t / dist.get_world_size()).tolist()))


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _record_weights(cfg, engine, reference, rank, when, summary):
    if not cfg.run.verify_weights:
        return
    local, full = engines.local_and_full_numel(engine.module)
    summary[f"policy_numel_{when}"] = {"local": local, "full": full}
    summary[f"policy_trainable_digest_{when}"] = engines.weights_digest(engine.module,
                                                                       lambda _, p: p.requires_grad)
    if reference is not None and reference.mode == "copy":
        local, full = engines.local_and_full_numel(reference.model.module)
        summary[f"reference_numel_{when}"] = {"local": local, "full": full}
        summary[f"reference_digest_{when}"] = engines.weights_digest(reference.model.module)
    if reference is not None and reference.mode == "adapter":  # the base weights are the reference
        summary[f"reference_digest_{when}"] = engines.weights_digest(engine.module, lambda n, _: "lora_" not in n)


def _full_state_dict_on_rank0(module, rank):
    """The module's state dict in CPU memory on rank 0 (None elsewhere), ZeRO-3 shards gathered one
    submodule at a time: no GPU ever holds the whole model (28 GB at 14B in bf16)."""
    import deepspeed

    state = {} if rank == 0 else None
    for prefix, sub in module.named_modules():
        own = list(sub.named_parameters(recurse=False))
        if not own:
            continue
        with deepspeed.zero.GatheredParameters([p for _, p in own], modifier_rank=None):
            if rank == 0:
                for n, p in own:
                    state[f"{prefix}.{n}" if prefix else n] = p.detach().to("cpu", copy=True)
    if rank == 0:
        params = set(state)
        for name, t in module.state_dict().items():  # persistent buffers: replicated, not sharded
            if name not in params:
                state[name] = t.detach().to("cpu", copy=True)
    return state


def _save_diffusers_folder(module, state, path):
    """`state` written as a diffusers model folder of `module`'s class and config, through a
    weightless (meta) instance, so diffusers' own save_pretrained shards and names the files."""
    with torch.device("meta"):
        skeleton = type(module).from_config(module.config)
    skeleton.load_state_dict(state, strict=True, assign=True)
    skeleton.save_pretrained(path)


def export(cfg, engine, output_dir, rank):
    """LoRA as a diffusers LoRA folder (`lora/`), or the full model as a diffusers folder (`model/`)."""
    import deepspeed

    module = engine.module
    if cfg.lora.enabled:  # adapters are small: gathered at once
        params = [p for n, p in module.named_parameters() if "lora_" in n]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            if rank == 0:
                models.export_lora(module, Path(output_dir) / "lora")
    else:
        state = _full_state_dict_on_rank0(module, rank)
        if rank == 0:
            _save_diffusers_folder(module, state, Path(output_dir) / "model")
    dist.barrier()


def train(cfg: TrainConfig) -> dict:
    device = init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    validate(cfg, world_size=world)
    out = Path(cfg.run.output_dir)
    # the same on every rank (or refused on all): no rank resumes while another starts over
    resuming = checkpoint.agreed_latest_tag(out) is not None
    if resuming and not cfg.run.resume:
        raise ValueError(f"run.output_dir {str(out)!r} already holds checkpoints: pass --resume to continue "
                         "that run, or choose a new --output-dir")
    if rank == 0 and not resuming:  # a resume writes it once its checks passed (below)
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, dump(cfg), 0)
    torch.manual_seed(cfg.run.seed)

    dataset = ShardDataset(cfg.data.path)
    store = None
    if cfg.reference.mode == "precomputed":  # checked before the model build: a stale store fails in seconds
        from .precompute import load_checked_store

        store = load_checked_store(cfg, dataset.records)
    sampler = ResumableSampler(len(dataset), rank=rank, world_size=world, batch_size=cfg.data.micro_batch,
                               seed=cfg.run.seed)
    engine, _ = engines.build_policy(cfg, device, world)
    dtype = engines.compute_dtype(cfg)
    reference = engines.build_reference(cfg, engine, device, world, store)

    micro, accum = cfg.data.micro_batch, cfg.data.grad_accum
    layout = {"world_size": world, "micro_batch": micro, "grad_accum": accum}
    if cfg.run.resume:
        checkpoint.check_layout(out, layout)
    start = checkpoint.load(engine, out) if cfg.run.resume else 0
    if rank == 0 and resuming:
        write_config(out, dump(cfg), start)
    summary = {"rank": rank, "world_size": world, "device": str(device), "start_step": start}
    _record_weights(cfg, engine, reference, rank, "start", summary)

    sampler.seek(start * accum * micro)
    loader = torch.utils.data.DataLoader(dataset, batch_size=micro, sampler=sampler, collate_fn=collate,
                                         num_workers=cfg.data.workers, pin_memory=device.type == "cuda")
    batches = iter(loader)
    log = RunLog(out, cfg.run.steps, start) if rank == 0 else None
    kill_at = int(os.environ.get("IPA_TRAIN_KILL_AT_STEP", "0"))  # tests: simulate a crash

    engine.train()
    for step in range(start, cfg.run.steps):
        if kill_at and step == kill_at and rank == 0:
            os.killpg(os.getpgid(0), signal.SIGKILL)
        t0, c0 = time.perf_counter(), time.process_time()
        lr = float(engine.get_lr()[0])  # this step's: engine.step() below moves the schedule on
        sums = {}
        for m in range(accum):
            consumed = (step * accum + m) * micro  # this rank's samples before this micro batch
            epoch = consumed // sampler.per_rank
            draw = epoch % cfg.reference.draws if cfg.reference.draws else step * accum + m
            batch = to_device(next(batches), device, dtype)
            loss, metrics = step_loss(cfg, engine, reference, batch, draw)
            engine.backward(loss)
            engine.step()
            for k, v in {"loss": loss.detach(), **metrics}.items():
                sums[k] = sums.get(k, 0) + v.detach().float() / accum
        row = _mean_over_ranks(sums)
        row = {"step": step + 1, **row, "lr": lr,
               "samples_per_s": micro * accum * world / (time.perf_counter() - t0),
               # rank 0's CPU seconds in this step: on a shared CPU far steadier than wall time
               "cpu_s_per_step": time.process_time() - c0,
               "peak_memory_mb": _peak_memory_mb(device)}
        gn = engine.get_global_grad_norm()
        if gn is not None:
            row["grad_norm"] = float(gn)
        if log is not None and ((step + 1) % cfg.run.log_every == 0 or step + 1 == cfg.run.steps):
            log.log(row)
        if (cfg.run.save_every and (step + 1) % cfg.run.save_every == 0) or step + 1 == cfg.run.steps:
            checkpoint.save(engine, out, step + 1, {**layout, "consumed": (step + 1) * accum * micro})

    if log is not None:
        log.close()
    _record_weights(cfg, engine, reference, rank, "end", summary)
    summary["peak_memory_mb"] = _peak_memory_mb(device)
    if cfg.run.export:
        export(cfg, engine, out, rank)
    (out / f"rank{rank}.json").write_text(json.dumps(summary, indent=1))
    dist.barrier()
    return summary
