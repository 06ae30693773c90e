"""The frozen reference of IPA, in three interchangeable modes behind one interface.

The reference enters the IPA loss only as one number per sample, ``err_ref_b``, so it can be

- ``copy``: a second instance loaded from the same source (never ``deepcopy``, which breaks
  under ZeRO-3 partitioned parameters), frozen, eval mode, no gradient checkpointing;
- ``adapter``: the LoRA policy itself with its adapters disabled for the reference forward, so no
  second copy of the weights exists;
- ``precomputed``: no model; errors read from a `ReferenceStore` written offline by
  `precompute_reference_errors` over deterministic (noise, t) draws (`ipa.models.draws`).

All three answer ``error(batch, noisy_latents, timesteps, target, hand_mask, loser=False, **halo_kw)``
-> [B] float32 (``loser``: the inputs are DPO's loser latents, which the precomputed store keeps
apart); the two online modes also answer ``predict(batch, noisy_latents, timesteps)``.
"""

import torch

from ipa.ops import halo_error

from .build import build_transformer
from .draws import ReferenceStore, flow_draw
from .inputs import check_family, model_inputs
from .lora import adapters_disabled, lora_layers

MODES = ("copy", "adapter", "precomputed")
HALO_DEFAULTS = {"hand_weight": 10.0, "skip_frames": 1}


def _unwrap(model):
    """The diffusers model inside a DeepSpeed engine / DDP wrapper (they expose ``.module``)."""
    return getattr(model, "module", model)


def forward(model, family, batch, noisy_latents, timesteps):
    """Velocity prediction of `model` (a transformer or a wrapper of one) on `noisy_latents`.

    The latents, and with them the batch's conditions (`model_inputs`), go in the model's dtype
    (``model.dtype``: diffusers skips the modules it keeps in fp32), so fp32 shards feed a bf16 model.
    """
    inner = _unwrap(model)
    kwargs = model_inputs(family, batch, noisy_latents.to(inner.dtype), timesteps, config=inner.config)
    return model(**kwargs)[0]


class Reference:
    """Base of the three modes. Subclasses set `mode` and implement `predict` or `error`."""

    mode = None

    def predict(self, batch, noisy_latents, timesteps):
        """The reference's velocity prediction, without gradient."""
        raise NotImplementedError(f"the {self.mode!r} reference has no model to predict with")

    def error(self, batch, noisy_latents, timesteps, target, hand_mask=None, *, loser=False, **halo_kw):
        """Per-sample HALO error of the reference, [B] float32, without gradient.

        ``loser``: the inputs are DPO's loser latents (an online reference just predicts on them).
        ``halo_kw``: ``hand_weight``, ``skip_frames``, ``backend`` of `ipa.ops.halo_error`
        (defaults: the paper's 10 and 1).
        """
        kw = {**HALO_DEFAULTS, **halo_kw}
        with torch.no_grad():
            pred = self.predict(batch, noisy_latents, timesteps)
            return halo_error(pred, target, hand_mask, **kw)

    @staticmethod
    def create(mode, *, policy=None, family=None, source=None, store=None, **build_kw):
        """Build a reference by mode name.

        copy: `family` and `source` (plus `build_transformer` keywords: dtype, device, seed,
        attention_backend), or a `policy` built by `build_transformer` to copy its build.
        adapter: the LoRA `policy`. precomputed: `store` (a `ReferenceStore` or its path).
        """
        if mode == "copy":
            if source is None and policy is not None:
                return CopyReference.like(policy, **build_kw)
            return CopyReference(family, source, **build_kw)
        if mode == "adapter":
            return AdapterReference(policy, family=family)
        if mode == "precomputed":
            return PrecomputedReference(store)
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


class CopyReference(Reference):
    """A second, frozen instance of the pretrained model. ``.model`` may be replaced by a
    DeepSpeed inference engine wrapping it (ZeRO-3 shards it like the policy)."""

    mode = "copy"

    def __init__(self, family, source, *, dtype, attention_backend="auto", device="cpu", seed=None):
        if source is None:
            raise ValueError("source is required for the copy reference (the pretrained model's folder, "
                             "'tiny' or a config dict)")
        self.family = check_family(family)
        self.model = build_transformer(family, source, dtype=dtype, attention_backend=attention_backend,
                                       gradient_checkpointing=False, seed=seed, device=device)
        self.model.requires_grad_(False).eval()

    @classmethod
    def like(cls, policy, **overrides):
        """A copy reference loaded the way `policy` was (its ``ipa_build``): same source and seed."""
        build = getattr(_unwrap(policy), "ipa_build", None)
        if build is None:
            raise ValueError("policy was not built by ipa.models.build_transformer; pass family= and source=")
        kw = {k: v for k, v in build.items() if k not in ("family", "source")}
        kw.update(overrides)
        if isinstance(build["source"], dict) or build["source"] == "tiny":  # random weights
            if kw.get("seed") is None:
                raise ValueError(f"policy has random weights (source {build['source']!r}) drawn without a seed: a "
                                 "copy reference cannot draw the same ones; build the policy with seed=...")
        return cls(build["family"], build["source"], **kw)

    def predict(self, batch, noisy_latents, timesteps):
        with torch.no_grad():
            return forward(self.model, self.family, batch, noisy_latents, timesteps)


class AdapterReference(Reference):
    """The LoRA policy with adapters disabled: the base weights are the reference weights."""

    mode = "adapter"

    def __init__(self, policy, family=None):
        self._layers = lora_layers(_unwrap(policy)) if policy is not None else []
        if not self._layers:
            raise ValueError("the adapter reference needs a policy with a LoRA adapter (ipa.models.add_lora); "
                             "for full fine-tuning use mode 'copy' or 'precomputed'")
        self.policy = policy
        self.family = check_family(family or _unwrap(policy).ipa_build["family"])

    def predict(self, batch, noisy_latents, timesteps):
        with torch.no_grad(), adapters_disabled(_unwrap(self.policy), self._layers):
            return forward(self.policy, self.family, batch, noisy_latents, timesteps)


class PrecomputedReference(Reference):
    """Errors looked up by (``batch["sample_id"]``, ``batch["draw"]``) in a `ReferenceStore`.

    With ``verify=True`` the step's timesteps must match the stored ones (catches a trainer that
    did not take its noise from `flow_draw` with the store's settings), and the HALO settings must
    match those the store was computed with.
    """

    mode = "precomputed"

    def __init__(self, store, *, verify=True):
        if store is None:
            raise ValueError("store is required for the precomputed reference (a ReferenceStore or its path)")
        self.store = store if isinstance(store, ReferenceStore) else ReferenceStore.load(store)
        self.verify = verify

    @property
    def draw_settings(self):
        """Keywords for `flow_draw` that reproduce the store's draws (seed, sampling, shift)."""
        return {k: self.store.meta[k] for k in ("seed", "sampling", "shift") if k in self.store.meta}

    def error(self, batch, noisy_latents, timesteps, target, hand_mask=None, *, loser=False, **halo_kw):
        if "draw" not in batch or "sample_id" not in batch:
            raise ValueError("the precomputed reference needs batch['sample_id'] and batch['draw']")
        err, t = self.store.lookup(batch["sample_id"], batch["draw"], loser=loser)
        if self.verify:
            kw = {**HALO_DEFAULTS, **{k: v for k, v in halo_kw.items() if k != "backend"}}
            for k, v in kw.items():
                if k in self.store.meta and self.store.meta[k] != v:
                    raise ValueError(f"{k}={v!r} differs from the store's {k}={self.store.meta[k]!r}")
            got = torch.as_tensor(timesteps).detach().float().cpu()
            if not torch.equal(got, t):
                raise ValueError(f"timesteps {got.tolist()} differ from the stored draws {t.tolist()}: take "
                                 f"noise and t from ipa.models.flow_draw(batch, **reference.draw_settings)")
        return err.to(noisy_latents.device)


def precompute_reference_errors(model, family, batches, *, n_draws, seed, sampling="uniform", shift=1.0,
                                hand_weight=10.0, skip_frames=1, backend="auto", store=None, losers=False):
    """The offline pass: reference errors of every sample in `batches` for draws 0..n_draws-1.

    `model` is the pretrained reference (frozen). Each batch needs the keys of `ipa.models.inputs`
    (``sample_id`` and ``hand_mask`` included), and ``x0_loser`` with `losers` (DPO: the errors on
    the loser latents too). Returns the `ReferenceStore` (new or `store`).
    """
    if store is None:
        store = ReferenceStore(n_draws, seed=seed, sampling=sampling, shift=shift, family=family,
                               hand_weight=hand_weight, skip_frames=skip_frames)
    halo_kw = {"hand_weight": hand_weight, "skip_frames": skip_frames, "backend": backend}
    for batch in batches:  # any iterable, a DataLoader or a generator included: read once
        if losers and "x0_loser" not in batch:
            raise ValueError("losers=True needs batch['x0_loser'] in every batch (DPO pairs)")
        B = batch["x0"].shape[0]
        for d in range(n_draws):
            draw = flow_draw(batch, seed=seed, sampling=sampling, shift=shift, draws=[d] * B)
            err = prediction_error(model, family, batch, draw["noisy"], draw["t"], draw["target"], **halo_kw)
            err_l = (prediction_error(model, family, batch, draw["noisy_loser"], draw["t"], draw["target_loser"],
                                      **halo_kw).tolist() if losers else [None] * B)
            for sid, t, e, e_l in zip(batch["sample_id"], draw["t"].tolist(), err.tolist(), err_l):
                store.add(sid, d, t, e, e_l)
    return store


def prediction_error(model, family, batch, noisy_latents, timesteps, target, **halo_kw):
    """Per-sample HALO error [B] of `model`'s prediction on `noisy_latents` (the batch's hand mask),
    without gradient: one reference error of the offline passes. ``halo_kw`` as `Reference.error`."""
    with torch.no_grad():
        pred = forward(model, family, batch, noisy_latents, timesteps)
        return halo_error(pred, target, batch.get("hand_mask"), **halo_kw)
