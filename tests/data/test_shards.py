"""The shard dataset format: round trip, verification, corrupt files named, resumable sampler."""

import json

import pytest
import torch

from ipa.data import ResumableSampler, ShardDataset, ShardError, ShardWriter, collate, synthesize


def test_synth_round_trip_and_batch_contract(tmp_path):
    out = synthesize(tmp_path / "ds", family="wan-vace", size="tiny", n=5, seed=3)
    ds = ShardDataset(out)
    assert len(ds) == 5 and ds.info["family"] == "wan-vace"
    b = collate([ds[0], ds[3]])
    assert b["sample_id"] == ["synth-3-00000", "synth-3-00003"]
    assert b["x0"].shape == (2, 16, 3, 8, 8) and b["hand_mask"].shape == (2, 2, 8, 8)
    assert b["control"].shape == (2, 96, 3, 8, 8) and b["text_emb"].shape[:2] == (2, 8)
    again = synthesize(tmp_path / "ds2", n=5, seed=3)
    assert torch.equal(ShardDataset(again)[4]["x0"], ds[4]["x0"])  # a pure function of the seed


def test_writer_rejects_duplicates_and_existing_dataset(tmp_path):
    with ShardWriter(tmp_path / "d") as w:
        w.add("a", {"x0": torch.zeros(2)})
        with pytest.raises(ValueError, match="sample_id must be unique"):
            w.add("a", {"x0": torch.zeros(2)})
    with pytest.raises(ValueError, match="already holds a dataset"):
        ShardWriter(tmp_path / "d")


def test_no_manifest_until_complete(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "d", samples_per_shard=1) as w:
        w.add("a", {"x0": torch.zeros(2)})
        raise RuntimeError("crash while writing")
    with pytest.raises(ShardError, match="no manifest.jsonl"):
        ShardDataset(tmp_path / "d")


def _dataset(tmp_path):
    return synthesize(tmp_path / "ds", n=4, samples_per_shard=2)


def test_corrupt_shard_is_named(tmp_path):
    out = _dataset(tmp_path)
    shard = out / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-40:-20] = bytes(20)  # damage tensor bytes, keep the header
    shard.write_bytes(bytes(data))
    ds = ShardDataset(out)
    ds[0]  # the other shard is fine
    with pytest.raises(ShardError, match="shard-00001.safetensors.*checksum"):
        ds[3]


def test_truncated_and_missing_shards_are_named(tmp_path):
    out = _dataset(tmp_path)
    shard = out / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(ShardError, match="shard-00000.safetensors is corrupt or truncated"):
        ShardDataset(out)[0]
    (out / "shard-00001.safetensors").unlink()
    with pytest.raises(ShardError, match=r"missing: \['shard-00001.safetensors'\]"):
        ShardDataset(out)


def test_manifest_line_errors_are_named(tmp_path):
    out = _dataset(tmp_path)
    (out / "manifest.jsonl").write_text((out / "manifest.jsonl").read_text() + "{not json\n")
    with pytest.raises(ShardError, match="manifest.jsonl: line 5"):
        ShardDataset(out)


def test_sampler_is_deterministic_disjoint_and_resumable():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    r0 = ResumableSampler(10, rank=0, world_size=2, batch_size=2, seed=7)
    r1 = ResumableSampler(10, rank=1, world_size=2, batch_size=2, seed=7)
    a, b = take(r0, 4), take(r1, 4)
    assert not set(a) & set(b) and len(r0) == 4
    assert take(ResumableSampler(10, rank=0, world_size=2, batch_size=2, seed=7), 4) == a
    full = take(ResumableSampler(10, rank=0, world_size=2, batch_size=2, seed=7), 12)
    resumed = ResumableSampler(10, rank=0, world_size=2, batch_size=2, seed=7)
    resumed.seek(6)  # 6 samples consumed: epoch 1, index 2
    assert resumed.state_dict() == {"epoch": 1, "index": 2}
    assert take(resumed, 6) == full[6:]
    with pytest.raises(ValueError, match="smaller than one global batch"):
        ResumableSampler(3, world_size=2, batch_size=2)


def test_writer_accepts_shared_and_view_tensors(tmp_path):
    shared = torch.arange(6.0)
    with ShardWriter(tmp_path / "d") as w:
        w.add("a", {"x0": shared, "half": shared[:3]})
        w.add("b", {"x0": shared})  # the same tensor object for a second sample
    ds = ShardDataset(tmp_path / "d")
    assert torch.equal(ds[1]["x0"], shared) and torch.equal(ds[0]["half"], shared[:3])


@pytest.mark.parametrize("family", ["wan-vace", "wan", "wan-animate"])
def test_synth_batches_feed_the_model(family, tmp_path):
    """Every family's synthetic samples carry the keys its transformer needs (ipa.models.inputs)."""
    from ipa import models

    ds = ShardDataset(synthesize(tmp_path / family, family=family, n=2))
    batch = collate([ds[0], ds[1]])
    model = models.build_transformer(family, "tiny", dtype=torch.float32, attention_backend="native", seed=0)
    d = models.flow_draw(batch, seed=0, draws=[0, 0])
    with torch.no_grad():
        out = models.forward(model, family, batch, d["noisy"], d["t"])
    assert out.shape == d["target"].shape and torch.isfinite(out).all()


def test_manifest_shapes_and_dtypes_must_be_the_datas(tmp_path):
    # The checksum covers the tensors, not the manifest's declarations, which training plans with.
    out = _dataset(tmp_path)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    rec = json.loads(lines[2])
    rec["shapes"]["x0"][-1] += 1
    lines[2] = json.dumps(rec)
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    ds = ShardDataset(out)
    ds[1]
    with pytest.raises(ShardError, match=r"manifest.jsonl'?: sample 'synth-0-00002' declares x0 \[16, 3, 8, 9\] "
                                         r"float32, its shard holds \[16, 3, 8, 8\] float32"):
        ds[2]
    assert ShardDataset(out, verify=False)[2]["x0"].shape == (16, 3, 8, 8)
