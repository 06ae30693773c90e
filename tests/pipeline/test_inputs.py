"""Decoding, cropping, pose drawing, prompt encoding, and the errors bad input gets."""

import json
import shutil

import numpy as np
import pytest
import torch

from ipa.data.pose_render import COLORS, Pose, draw_pose, load_pose
from ipa.data.prepare import load_clip, prepare
from ipa.data.video import CropGeometry, frame_indices

from .conftest import FRAMES, SIZE, SRC_T, wholebody, write_clip


def test_crop_geometry_maps_points_like_pixels():
    geo = CropGeometry(40, 56, 32, 32)
    img = np.zeros((40, 56, 3), np.uint8)
    img[20, 28] = 255  # the centre pixel
    out = geo.frame(img)
    assert out.shape == (32, 32, 3)
    y, x = np.unravel_index(out[..., 0].argmax(), out.shape[:2])
    np.testing.assert_allclose(geo.points(np.array([28.5, 20.5])), [x + 0.5, y + 0.5], atol=1.0)


def test_frame_indices():
    assert frame_indices(12, 5, stride=2, start=1).tolist() == [1, 3, 5, 7, 9]
    with pytest.raises(ValueError, match="4k \\+ 1"):
        frame_indices(12, 8)


def test_draw_pose_dwpose_style():
    a = np.stack([wholebody(t, 3, 64, 64) for t in range(3)])
    from ipa.data.pose_render import _body_from_wholebody
    from ipa.hands.keypoints import hands_from_array

    body, face = _body_from_wholebody(a[:, None])
    pose = Pose(body, hands_from_array(a), face)
    img = draw_pose(pose, 0, 64, 64)
    x, y = body[0, 0, 5, :2].astype(int)  # OpenPose 5 = left shoulder (COCO 5)
    assert tuple(img[y, x]) == tuple(COLORS[5])  # joint discs in their full colour
    hx, hy = pose.hands[0, 0, 3, :2].astype(int)
    assert tuple(img[hy, hx]) == (0, 0, 255)  # hand joints blue
    fx, fy = face[0, 0, 0, :2].astype(int)
    assert tuple(img[fy, fx]) == (255, 255, 255)  # face points white
    pose.body[..., 2] = 0  # unconfident points are not drawn
    pose.hands[..., 2] = 0
    pose.face[..., 2] = 0
    assert draw_pose(pose, 0, 64, 64).max() == 0


def test_openpose_json_body25_and_normalized(tmp_path):
    b25 = np.zeros((25, 3))
    b25[8] = (0.9, 0.9, 1)   # MidHip: dropped in COCO-18 order
    b25[9] = (0.25, 0.5, 1)  # RHip -> OpenPose-18 index 8
    frames = [{"people": [{"pose_keypoints_2d": b25.ravel().tolist(), "face_keypoints_2d": [0.5, 0.5, 1] * 70,
                           "hand_left_keypoints_2d": [0.1, 0.2, 0.9] * 21}]}] * 2
    (tmp_path / "p.json").write_text(json.dumps(frames))
    pose = load_pose(tmp_path / "p.json")
    assert pose.body.shape == (2, 1, 18, 3) and pose.face.shape == (2, 1, 70, 3)
    np.testing.assert_allclose(pose.body[0, 0, 8], (0.25, 0.5, 1))
    assert pose.is_normalized()


def test_prompt_encoder_on_a_tiny_t5(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    from ipa.data.encode import PromptEncoder

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", "a", "person", "waves", "dances"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(tmp_path / "te")
    torch.manual_seed(0)
    T5EncoderModel(T5Config(vocab_size=8, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4)).save_pretrained(tmp_path / "te")
    enc = PromptEncoder(tmp_path / "te", max_length=6)
    e1, e2 = enc("a  person waves"), enc("a person dances")
    assert e1.shape == (6, 32) and e1[3:].abs().max() == 0 and e1[:3].abs().min() > 0  # 3 real tokens, zero pad
    assert not torch.allclose(e1, e2)


# ------------------------------------------------------------------------------ bad input

def test_short_video_names_the_file(tmp_path):
    write_clip(tmp_path / "short.mp4", T=6)
    np.save(tmp_path / "short.npy", np.stack([wholebody(t, 6) for t in range(6)]))
    with pytest.raises(ValueError, match=r"short\.mp4.* has 6 frames, fewer than the 9 needed"):
        load_clip(tmp_path / "short.mp4", tmp_path / "short.npy", SIZE, FRAMES)


def test_keypoints_length_mismatch_names_both_files(tmp_path):
    write_clip(tmp_path / "v.mp4")
    np.save(tmp_path / "v.npy", np.stack([wholebody(t, SRC_T) for t in range(SRC_T - 2)]))
    with pytest.raises(ValueError, match=r"keypoints .*v\.npy.* have 10 frames but video .*v\.mp4.* has 12"):
        load_clip(tmp_path / "v.mp4", tmp_path / "v.npy", SIZE, FRAMES)


def test_missing_keypoints_fail_before_any_work(inputs, tmp_path):
    videos, poses, vae, emb = inputs
    shutil.copytree(poses, tmp_path / "poses")
    (tmp_path / "poses" / "clip_b.npy").unlink()
    with pytest.raises(ValueError, match="no keypoints for video 'clip_b'"):
        prepare(videos, tmp_path / "poses", tmp_path / "out", vae=vae, text_emb=emb, size=SIZE, num_frames=FRAMES)
    assert not (tmp_path / "out").exists()


def test_prepare_errors_name_the_command_line_flags(inputs, tmp_path):
    videos, poses, vae, emb = inputs
    for kwargs, message in ((dict(text_emb=emb, num_frames=8), r"num_frames \(--frames\) must be 4k \+ 1"),
                            (dict(text_emb=emb, size=(40, 56)), r"size \(--size\) must be multiples of 16"),
                            (dict(), r"text_encoder \(--text-encoder: .*text_emb \(--text-emb: ")):
        with pytest.raises(ValueError, match=message):
            prepare(videos, poses, tmp_path / "out", vae=vae, **{"size": SIZE, "num_frames": FRAMES, **kwargs})
    assert not (tmp_path / "out").exists()


def test_candidate_folder_missing_a_file(candidates, tmp_path):
    from ipa.select.candidates import load_candidates

    copy = tmp_path / "cands"
    shutil.copytree(candidates, copy)
    (copy / "clip_b" / "cand-1" / "latents.safetensors").unlink()
    with pytest.raises(ValueError, match=r"clip_b/cand-1.* is missing latents\.safetensors"):
        load_candidates(copy)
    with pytest.raises(ValueError, match=r"no run\.json"):
        load_candidates(tmp_path)


def test_prepare_with_mediapipe_hands(inputs, hand_model, tmp_path):
    """--hand-source mediapipe: masks from detections on the prepared frames (none in these
    synthetic clips, so the masks are empty while the keypoint masks are not)."""
    from ipa.data import ShardDataset

    videos, poses, vae, emb = inputs
    out = prepare(videos, poses, tmp_path / "mp", vae=vae, text_emb=emb, size=SIZE, num_frames=FRAMES,
                  hand_source="mediapipe", hand_model=hand_model, progress=False)
    ds = ShardDataset(out)
    assert ds.info["hand_source"] == "mediapipe"
    assert ds[0]["hand_mask"].shape == (3, 4, 4) and ds[0]["hand_mask"].sum() == 0
