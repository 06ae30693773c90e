import numpy as np
import pytest

from ipa.eval.protocol import Protocol
from tests.eval.conftest import moving_video


def test_yaml_round_trip_and_sampling(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("sequences: [a, b]\nresolution: [24, 32]\nstart: 1\nstride: 2\nmax_frames: 3\n")
    p = Protocol.from_yaml(cfg)
    assert p.sequences == ["a", "b"] and p.resolution == (24, 32)
    np.testing.assert_array_equal(p.frame_indices(10), [1, 3, 5])
    frames, idx, scale = p.apply(moving_video(t=10))
    assert frames.shape == (3, 24, 32, 3) and scale == (0.5, 0.5)
    assert Protocol.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("text, match", [
    ("strid: 2\n", "protocol: unknown field"),
    ("resolution: [24]\n", "resolution: expected"),
    ("stride: 0\n", "stride: expected an integer >= 1"),
    ("sequences: abc\n", "sequences: expected a list"),
    ("hand_padding: -1\n", "hand_padding"),
    ("resolution: abc\n", "resolution: expected"),
    ("stride: [2\n", "protocol: .* is not valid YAML"),
])
def test_bad_protocol(tmp_path, text, match):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(text)
    with pytest.raises(ValueError, match=match):
        Protocol.from_yaml(cfg)


def test_missing_protocol_file(tmp_path):
    with pytest.raises(ValueError, match="protocol: .* does not exist"):
        Protocol.from_yaml(tmp_path / "none.yaml")


def test_start_past_end():
    with pytest.raises(ValueError, match="start: 20 leaves no frames of a 9-frame video"):
        Protocol(start=20).apply(moving_video())


def test_shipped_tiktok_protocol_loads():
    from pathlib import Path

    p = Protocol.from_yaml(Path(__file__).resolve().parents[2] / "configs" / "eval-tiktok.yaml")
    assert p.sequences == [f"00{n}" for n in range(335, 341)] and p.resolution == (512, 512)
    assert p.lpips_weights is None and p.extractors == {}
