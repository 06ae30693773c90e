"""The whole self-generated data chain on tiny random models, through the `ipa` command line:
prepare -> generate (2 candidates per condition) -> select auto (MediaPipe) -> curate -> the
trainer's loader and the model's inputs."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ipa.cli import main
from ipa.data import ShardDataset, collate

from .conftest import FRAMES, SIZE, TEXT_DIM, TEXT_LEN


def test_prepare_writes_vace_conditions(conditions):
    ds = ShardDataset(conditions)
    assert len(ds) == 2 and ds.info["family"] == "wan-vace" and ds.info["reference"]
    s = ds[0]
    h, w, k = SIZE[0] // 8, SIZE[1] // 8, (FRAMES - 1) // 4
    assert s["x0"].shape == (16, 1 + k + 1, h, w)          # reference latent + clip latents
    assert s["control"].shape == (96, 1 + k + 1, h, w)     # [inactive | reactive | 64 mask]
    assert s["text_emb"].shape == (TEXT_LEN, TEXT_DIM)
    assert s["hand_mask"].shape == (k + 1, h, w)
    assert s["hand_mask"].sum() > 0                        # the keypoints' hands land on the grid
    # the reference frame: latent in frame 0 of x0 and control, no pose, zero mask channels
    assert torch.equal(s["control"][:16, 0], s["x0"][:, 0])
    assert s["control"][16:, 0].abs().max() == 0
    assert torch.all(s["control"][32:, 1:] == 1)
    side = conditions / "conditions" / s["sample_id"]
    hands = np.load(side / "hands.npy")
    assert hands.shape[:1] == (FRAMES,) and hands.shape[2:] == (21, 3)
    # keypoints went through the same resize-to-cover + center crop as the pixels: 40x56 -> 32x45,
    # 6 columns cropped on the left
    from .conftest import SRC_H, SRC_T, SRC_W, wholebody
    src = wholebody(0, SRC_T)[91:112]
    np.testing.assert_allclose(hands[0, 0, :, 0], src[:, 0] * 45 / SRC_W - 6, atol=1e-4)
    np.testing.assert_allclose(hands[0, 0, :, 1], src[:, 1] * 32 / SRC_H, atol=1e-4)
    for name in ("pose.mp4", "video.mp4", "reference.png", "meta.json"):
        assert (side / name).is_file()


def test_generate_writes_candidates(candidates, conditions):
    from ipa.data.video import decode_video

    run = json.loads((candidates / "run.json").read_text())
    assert run["candidates"] == 2
    cond = ShardDataset(conditions)[0]
    seeds = set()
    for k in range(2):
        folder = candidates / cond["sample_id"] / f"cand-{k}"
        x0 = load_file(str(folder / "latents.safetensors"))["x0"]
        assert x0.shape == cond["x0"].shape and torch.isfinite(x0).all()
        assert torch.equal(x0[:, 0], cond["x0"][:, 0])  # the reference slot keeps the encoded reference
        frames, _ = decode_video(folder / "video.mp4")
        assert frames.shape == (FRAMES, *SIZE, 3)
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["condition"] == cond["sample_id"] and meta["candidate"] == k
        seeds.add(meta["seed"])
    assert len(seeds) == 2
    a = load_file(str(candidates / cond["sample_id"] / "cand-0" / "latents.safetensors"))["x0"]
    b = load_file(str(candidates / cond["sample_id"] / "cand-1" / "latents.safetensors"))["x0"]
    assert not torch.allclose(a[:, 1:], b[:, 1:])  # different seeds, different samples


def test_rerun_reuses_finished_candidates_only_under_the_same_settings(candidates, conditions, tiny_model, tmp_path):
    """A rerun skips finished candidates: one with more candidates adds only the new ones; one with
    other sampling settings would keep the old candidates under its new run.json, so it is refused
    before the model loads, and the folder is left as it was."""
    import shutil

    out = shutil.copytree(candidates, tmp_path / "rerun")
    first = {p: p.stat().st_mtime_ns for p in out.glob("*/cand-*/latents.safetensors")}
    argv = ["generate", "--model", str(tiny_model), "--conditions", str(conditions), "--out", str(out), "--seed", "7"]
    same = ["--steps", "2", "--dtype", "float32"]
    assert main(argv + same + ["--candidates", "3", "--batch-size", "1"]) == 0  # batching is no sampling setting
    assert {p: p.stat().st_mtime_ns for p in first} == first and len(list(out.glob("*/cand-2/meta.json"))) == 2
    run_json = (out / "run.json").read_text()
    for change, said in ((["--steps", "3", "--dtype", "float32"], "steps: 2 there, 3 here"),
                         (same + ["--lora", "lora"], "lora: None there, 'lora' here"),
                         (["--steps", "2"], "dtype: 'float32' there, 'bfloat16' here")):  # bf16 by default
        with pytest.raises(ValueError, match=rf"other settings \({re.escape(said)}\).*use another --out"):
            main(argv + change)
    assert (out / "run.json").read_text() == run_json


def test_guidance_without_a_negative_embedding_is_refused_first(conditions, tiny_model, tmp_path):
    out = tmp_path / "cfg"
    with pytest.raises(ValueError, match=r"guidance 2.0 > 1 needs negative_emb \(--negative-emb"):
        main(["generate", "--model", str(tiny_model), "--conditions", str(conditions), "--out", str(out),
              "--guidance", "2"])
    assert not out.exists()  # refused before anything was loaded or written


def test_default_bf16_generation_follows_the_fp32_one(candidates, conditions, tiny_model, tmp_path):
    """`ipa generate` without --dtype samples in bf16 (it once took Wan's fp32 scale_shift_table for
    the model's dtype and fed fp32 latents to bf16 weights): the same candidates up to bf16 rounding,
    far closer than another seed's (a relative difference near 1.4)."""
    out = tmp_path / "bf16"
    assert main(["generate", "--model", str(tiny_model), "--conditions", str(conditions), "--out", str(out),
                 "--candidates", "2", "--steps", "2", "--seed", "7"]) == 0
    for folder in sorted(candidates.glob("*/cand-*")):
        fp32 = load_file(str(folder / "latents.safetensors"))["x0"].double()
        bf16 = load_file(str(out / folder.relative_to(candidates) / "latents.safetensors"))["x0"].double()
        assert ((bf16 - fp32).norm() / fp32.norm()).item() < 2e-2, folder


def test_sampling_does_not_depend_on_batching(conditions):
    """A candidate is a function of its seed: batched or alone, the same latents."""
    from ipa.generate import sample
    from ipa.models import build_transformer

    model = build_transformer("wan-vace", "tiny", dtype=torch.float32, seed=0).eval()
    ds = ShardDataset(conditions)
    cond = collate([ds[0], ds[1]])
    both = sample(model, cond, [11, 12], steps=2)
    alone = sample(model, {k: v[1:] for k, v in cond.items() if k != "sample_id"}, [12], steps=2)
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-5)


def test_guidance_mixes_conditional_and_unconditional_predictions(conditions):
    """v = v_u + g (v_c - v_u): with the negative embedding equal to the prompt's, any g gives g = 1;
    with another one, g moves the sample; g > 1 without one is refused."""
    from ipa.generate import sample
    from ipa.models import build_transformer

    model = build_transformer("wan-vace", "tiny", dtype=torch.float32, seed=0).eval()
    cond = {k: v for k, v in collate([ShardDataset(conditions)[0]]).items() if k != "sample_id"}
    plain = sample(model, cond, [5], steps=2)
    same = sample(model, cond, [5], steps=2, guidance=4.0, negative_emb=cond["text_emb"][0])
    torch.testing.assert_close(same, plain, atol=1e-5, rtol=1e-5)
    other = sample(model, cond, [5], steps=2, guidance=4.0, negative_emb=torch.zeros_like(cond["text_emb"][0]))
    assert (other - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="guidance > 1 needs negative_emb"):
        sample(model, cond, [5], steps=2, guidance=4.0)


def test_latent_codec_normalizes_with_the_vae_statistics():
    """Shards hold (z - latents_mean) / latents_std of the VAE's mode; decode inverts that."""
    from ipa.data.encode import LatentCodec

    from .conftest import tiny_vae

    vae = tiny_vae()
    vae.register_to_config(latents_mean=[0.1 * i for i in range(16)], latents_std=[1.0 + 0.05 * i for i in range(16)])
    codec = LatentCodec(vae)
    pixels = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    z = vae.encode(pixels).latent_dist.mode()[0]
    mean, std = torch.tensor(vae.config.latents_mean), torch.tensor(vae.config.latents_std)
    got = codec.encode(pixels)
    torch.testing.assert_close(got, (z - mean.view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1))
    video = vae.decode(z[None]).sample[0]
    expect = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    assert np.abs(codec.decode(got).astype(int) - expect.astype(int)).max() <= 1


def test_auto_select_curate_and_load(candidates, conditions, hand_model, tmp_path):
    sel = tmp_path / "selection.json"
    assert main(["select", "auto", "--candidates", str(candidates), "--out", str(sel),
                 "--hand-model", str(hand_model)]) == 0
    data = json.loads(sel.read_text())
    assert len(data["candidates"]) == 4
    for c in data["candidates"].values():
        assert 0 <= c["score"] <= 1 and c["human"] is None and set(c["scores"]) >= {
            "detection", "confidence", "jitter", "agreement"}
    assert sum(c["auto"] for c in data["candidates"].values()) == 2  # top 1 of each condition
    curated = tmp_path / "curated"
    assert main(["select", "curate", "--candidates", str(candidates), "--selection", str(sel),
                 "--out", str(curated)]) == 0

    # The trainer's loader: ShardDataset + collate, then the model's own inputs and a forward pass.
    from ipa.models import build_transformer, model_inputs

    ds = ShardDataset(curated)
    assert len(ds) == 2 and ds.info["curated"]
    batch = collate([ds[i] for i in range(len(ds))])
    cond = ShardDataset(conditions)
    for i, sid in enumerate(batch["sample_id"]):
        name, k = sid.rsplit("-cand", 1)
        gen = load_file(str(candidates / name / f"cand-{k}" / "latents.safetensors"))["x0"]
        assert torch.equal(batch["x0"][i], gen)
        src = cond[[r["id"] for r in cond.records].index(name)]
        assert torch.equal(batch["control"][i], src["control"]) and torch.equal(batch["hand_mask"][i], src["hand_mask"])
    model = build_transformer("wan-vace", "tiny", dtype=torch.float32, seed=0)
    t = torch.full((2,), 0.5)
    out = model(**model_inputs("wan-vace", batch, torch.randn_like(batch["x0"]), t, config=model.config))[0]
    assert out.shape == batch["x0"].shape


class NoHands:
    """Stands in for the MediaPipe detector: finds no hand (scores do not matter here)."""

    def detect_video(self, frames, fps=16.0):
        return [[] for _ in frames]


def test_rescoring_keeps_marks_only_on_the_same_samples(candidates, tmp_path):
    """A person's marks survive a rescoring of the same candidates; a selection whose marked
    candidates were regenerated differently (or are gone) is refused, not moved to other videos."""
    import shutil

    from ipa.select.auto import auto_select
    from ipa.select.candidates import read_selection, write_selection
    from ipa.select.curate import curate

    cands, sel = shutil.copytree(candidates, tmp_path / "cands"), tmp_path / "selection.json"
    selection = auto_select(cands, sel, detector=NoHands(), progress=False)
    key = sorted(selection["candidates"])[1]
    selection["candidates"][key]["human"] = "good"  # as the review page writes it
    write_selection(sel, selection)
    auto_select(cands, sel, detector=NoHands(), progress=False)  # the same candidates: the mark stays
    assert read_selection(sel)["candidates"][key]["human"] == "good"
    meta_path = cands / key / "meta.json"
    meta = json.loads(meta_path.read_text())
    before = sel.read_text()
    for change, said in (({**meta, "steps": meta["steps"] + 1}, f"{key} (good): another sample now"),
                         (None, f"{key} (good): not among the candidates")):
        if change is None:
            shutil.rmtree(cands / key)
        else:
            meta_path.write_text(json.dumps(change))
        with pytest.raises(ValueError, match=rf"holds a person's marks for other candidates .*{re.escape(said)}"):
            auto_select(cands, sel, detector=NoHands(), progress=False)
        assert sel.read_text() == before
        if change is not None:  # curate will not train on the new sample under the old choice either
            with pytest.raises(ValueError, match=rf"chose other samples than .*{re.escape(said)}"):
                curate(cands, sel, tmp_path / "curated")


def test_curate_needs_a_choice(candidates, tmp_path):
    from ipa.select.curate import curate
    from ipa.select.candidates import write_selection

    sel = tmp_path / "none.json"
    write_selection(sel, {"candidates": {"clip_a/cand-0": {"auto": False, "human": "bad"}}})
    with pytest.raises(ValueError, match="chooses no candidate"):
        curate(candidates, sel, tmp_path / "out")


@pytest.mark.slow
def test_trainer_runs_on_the_curated_set(candidates, tmp_path):
    """Two IPA steps of `ipa train` (tiny config, one rank) on a curated set: step 1 is log 2."""
    import math
    import subprocess
    import sys
    from pathlib import Path

    from ipa.select.auto import select
    from ipa.select.candidates import load_candidates, write_selection

    sel = tmp_path / "selection.json"
    scored = {c.key: {"condition": c.condition, "candidate": c.index, "score": 0.5} for c in load_candidates(candidates)}
    write_selection(sel, {"candidates": select(scored, top=1)})
    assert main(["select", "curate", "--candidates", str(candidates), "--selection", str(sel),
                 "--out", str(tmp_path / "curated")]) == 0
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "ipa.cli", "train", "--config", str(repo / "configs/tiny-cpu.yaml"),
                           "--nproc", "1", "--output-dir", str(tmp_path / "run"), f"data.path={tmp_path / 'curated'}",
                           "data.micro_batch=2", "run.steps=2", "run.save_every=2"],
                          capture_output=True, text=True, timeout=300, cwd=repo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
