"""The data batch contract and the transformer keyword arguments built from it.

A batch is a plain ``dict`` of tensors (plus ``sample_id``), produced by ``ipa.data`` and consumed
by ``ipa.train``; this module is the one place its keys are defined. Shapes use B batch, C latent
channels (16 for the Wan VAE; ``out_channels`` of the model config), F latent frames, H x W the
latent grid (pixels / 8), L text tokens.

Keys for every family
---------------------
``"x0"``        float [B, C, F, H, W]   clean VAE latents the policy learns to denoise. Frame 0 is
                                        the first frame (Wan's causal VAE encodes it alone; for
                                        VACE/Animate with a reference image it is that image).
``"text_emb"``  float [B, L, text_dim]  precomputed umT5 prompt embeddings (the real models use
                                        L = 512, zero-padded as WanPipeline pads them).
``"hand_mask"`` float [B, F-1, H, W]    hand mask on the latent grid, in [0, 1], for the frames
                                        after the first (``[B, 1, F-1, H, W]`` is accepted too);
                                        all zeros where no hand is visible.
``"sample_id"`` list[str], length B     stable id of each sample (shard key); seeds the
                                        deterministic (noise, t) draws of the precomputed
                                        reference.
``"draw"``      int64 [B], optional     which deterministic draw of that sample this step uses
                                        (needed only with ``reference="precomputed"``).

Family ``"wan-vace"`` (WanVACETransformer3DModel, the paper's model)
--------------------------------------------------------------------
``"control"``   float [B, vace_in_channels, Fc, H, W], Fc <= F
                VACE context exactly as ``WanVACEPipeline`` builds it: channels
                ``[inactive latents (C) | reactive latents (C) | mask (64)]`` = 96 for C = 16,
                where inactive = VAE(video * (1 - m)), reactive = VAE(video * m) for the pose video
                (m = 1 everywhere for pose control, so inactive encodes a zero video), and the mask
                is the pixel mask unfolded 8x8 onto the latent grid (64 channels) and 4x in time.
                Reference-image frames, when used, are prepended along F to both ``x0`` and
                ``control`` (their mask channels zero), as the pipeline does.

Family ``"wan"`` (WanTransformer3DModel, T2V; I2V-style checkpoints)
--------------------------------------------------------------------
``"cond_latents"`` float [B, in_channels - C, F, H, W], only when ``in_channels > out_channels``
                (I2V: 4 mask channels + C image latents), concatenated after the noisy latents.
``"image_emb"``  float [B, L_img, image_dim], only when the config has ``image_dim`` (CLIP).

Family ``"wan-animate"`` (WanAnimateTransformer3DModel)
-------------------------------------------------------
``"cond_latents"`` float [B, C + 4, F, H, W]   reference conditioning concatenated on channels
                after the noisy latents: ``[mask (4) | latents (C)]``, frame 0 the reference image,
                frames 1.. the previous-segment condition (zeros with mask 0 when there is none).
``"pose_latents"`` float [B, C, F-1, H, W]     VAE latents of the pose (skeleton) video; added
                to every frame but the reference frame.
``"face_pixels"``  float [B, 3, 4(F-1)-3, S, S] face crops in pixel space, values in [-1, 1],
                S = ``motion_encoder_size`` (512 real); 4(F-1)-3 frames so the face encoder's two
                stride-2 convolutions land on F-1 frames (77 pixel frames for F = 21).
``"image_emb"``    float [B, L_img, image_dim]  CLIP features of the reference image.

Timesteps: the trainer works with the normalized ``s`` in [0, 1] (s = 1 pure noise, diffusers'
flow-matching convention ``x_t = (1 - s) x0 + s noise``); the transformer receives ``s * 1000``.
"""

import torch

FAMILIES = ("wan-vace", "wan", "wan-animate")

# Keys beyond the common ones that each family requires (config-dependent ones are added below).
COMMON_KEYS = ("x0", "text_emb", "hand_mask", "sample_id")


def check_family(family):
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return family


def required_keys(family, config):
    """Batch keys `model_inputs` needs for this family and model config (beyond ``hand_mask``,
    ``sample_id`` and ``draw``, which the loss and the reference use)."""
    check_family(family)
    keys = ["x0", "text_emb"]
    if family == "wan-vace":
        keys.append("control")
    elif family == "wan-animate":
        keys += ["cond_latents", "pose_latents", "face_pixels"]
    elif config.get("in_channels", 16) > (config.get("out_channels") or config.get("in_channels", 16)):
        keys.append("cond_latents")
    if config.get("image_dim") is not None:
        keys.append("image_emb")
    return keys


def _get(batch, key, family):
    if key not in batch:
        raise ValueError(f"batch is missing {key!r}, required for family {family!r} "
                         f"(see ipa.models.inputs for the batch keys)")
    return batch[key]


def _expect(name, tensor, shape):
    """Check `tensor.shape` against `shape` (None = any size)."""
    if tensor.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, tensor.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"batch[{name!r}] must have shape {want}, got {list(tensor.shape)}")


def model_inputs(family, batch, noisy_latents, timesteps, *, config=None):
    """Keyword arguments for the family's transformer ``forward`` on ``noisy_latents``.

    Args:
        family: "wan-vace", "wan" or "wan-animate".
        batch: dict with the keys documented in this module.
        noisy_latents: x_t, [B, C, F, H, W].
        timesteps: normalized s in [0, 1], shape [B]; sent to the model as ``s * 1000``.
        config: the transformer's config (``model.config``), used to check channel counts and
            to decide optional keys; pass it when you have it.
    Returns:
        dict for ``transformer(**kwargs)``, with ``return_dict=False`` (output is ``out[0]``).
    Text, control and conditioning tensors are cast to ``noisy_latents.dtype``.
    """
    check_family(family)
    config = dict(config or {})
    if noisy_latents.dim() != 5:
        raise ValueError(f"noisy_latents must be [B, C, F, H, W], got {list(noisy_latents.shape)}")
    B, C, F, H, W = noisy_latents.shape
    timesteps = torch.as_tensor(timesteps, device=noisy_latents.device)
    if timesteps.shape != (B,):
        raise ValueError(f"timesteps must have shape [{B}] (one s in [0, 1] per sample), got {list(timesteps.shape)}")
    dtype = noisy_latents.dtype
    text = _get(batch, "text_emb", family)
    _expect("text_emb", text, (B, None, config.get("text_dim")))
    kwargs = {
        "hidden_states": noisy_latents,
        "timestep": timesteps.float() * 1000.0,  # diffusers' Wan schedulers use s * 1000
        "encoder_hidden_states": text.to(dtype),
        "return_dict": False,
    }
    if config.get("image_dim") is not None:
        img = _get(batch, "image_emb", family)
        _expect("image_emb", img, (B, None, config["image_dim"]))
        kwargs["encoder_hidden_states_image"] = img.to(dtype)

    if family == "wan-vace":
        control = _get(batch, "control", family)
        _expect("control", control, (B, config.get("vace_in_channels"), None, H, W))
        if control.shape[2] > F:
            raise ValueError(f"batch['control'] has {control.shape[2]} frames, more than the {F} latent frames")
        kwargs["control_hidden_states"] = control.to(dtype)
    elif family == "wan-animate":
        cond = _get(batch, "cond_latents", family)
        _expect("cond_latents", cond, (B, C + 4, F, H, W))
        kwargs["hidden_states"] = torch.cat([noisy_latents, cond.to(dtype)], dim=1)
        pose = _get(batch, "pose_latents", family)
        _expect("pose_latents", pose, (B, C, F - 1, H, W))
        kwargs["pose_hidden_states"] = pose.to(dtype)
        face = _get(batch, "face_pixels", family)
        S = config.get("motion_encoder_size")
        _expect("face_pixels", face, (B, 3, 4 * (F - 1) - 3, S, S))
        kwargs["face_pixel_values"] = face.to(dtype)
    else:
        extra = config.get("in_channels", C) - C
        if extra > 0 or "cond_latents" in batch:
            cond = _get(batch, "cond_latents", family)
            _expect("cond_latents", cond, (B, extra if config else None, F, H, W))
            kwargs["hidden_states"] = torch.cat([noisy_latents, cond.to(dtype)], dim=1)
    return kwargs
