"""Decoding training clips: PyAV decode, a `4k + 1` frame window, resize-to-cover + center crop.

The geometry (`CropGeometry`) is kept so that keypoints given in the source video's pixels can be
mapped onto the prepared frames exactly as the pixels were.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class CropGeometry:
    """Source size -> resized size -> center crop of (height, width)."""

    src_h: int
    src_w: int
    height: int
    width: int

    @property
    def scale(self) -> float:
        # Cover: the smaller scale that still fills both sides, so the crop never pads.
        return max(self.height / self.src_h, self.width / self.src_w)

    @property
    def resized(self) -> tuple[int, int]:
        s = self.scale
        return max(self.height, round(self.src_h * s)), max(self.width, round(self.src_w * s))

    @property
    def offset(self) -> tuple[int, int]:
        rh, rw = self.resized
        return (rh - self.height) // 2, (rw - self.width) // 2

    def frame(self, rgb: np.ndarray) -> np.ndarray:
        """Resize and crop one RGB frame `[src_h, src_w, 3]` to `[height, width, 3]`."""
        rh, rw = self.resized
        interp = cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR  # area: no aliasing when shrinking
        out = cv2.resize(rgb, (rw, rh), interpolation=interp)
        top, left = self.offset
        return out[top:top + self.height, left:left + self.width]

    def points(self, xy: np.ndarray) -> np.ndarray:
        """Map source-pixel coordinates `[..., 2]` onto the cropped frame."""
        sy, sx = self.resized[0] / self.src_h, self.resized[1] / self.src_w
        top, left = self.offset
        out = np.array(xy, dtype=np.float64, copy=True)
        out[..., 0] = out[..., 0] * sx - left
        out[..., 1] = out[..., 1] * sy - top
        return out


def check_frame_count(num_frames: int, arg: str = "num_frames") -> int:
    if not (isinstance(num_frames, int) and num_frames >= 1 and (num_frames - 1) % 4 == 0):
        raise ValueError(f"{arg} must be 4k + 1 (Wan's causal VAE: 1, 5, ..., 81), got {num_frames!r}")
    return num_frames


def frame_indices(total: int, num_frames: int, *, stride: int = 1, start: int = 0, path="video") -> np.ndarray:
    """Indices of the `num_frames` frames taken from a `total`-frame video, or ValueError naming `path`."""
    check_frame_count(num_frames)
    if stride < 1 or start < 0:
        raise ValueError(f"stride must be >= 1 and start >= 0, got stride={stride}, start={start}")
    need = start + (num_frames - 1) * stride + 1
    if total < need:
        raise ValueError(f"video {str(path)!r} has {total} frames, fewer than the {need} needed "
                         f"(num_frames={num_frames}, stride={stride}, start={start})")
    return start + stride * np.arange(num_frames)


def decode_video(path) -> tuple[np.ndarray, float]:
    """All frames of `path` as RGB uint8 `[T, H, W, 3]` and its frame rate (PyAV, via ipa.hands)."""
    from ipa.hands.media import read_video

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"video {str(path)!r} does not exist")
    return read_video(path)


def write_mp4(path, frames, fps: float = 16.0) -> Path:
    """H.264 MP4 from RGB uint8 `[T, H, W, 3]`, written to a temporary name and renamed (atomic)."""
    from ipa.hands.media import write_video

    path = Path(path)
    part = path.with_name(path.stem + ".part" + path.suffix)  # keep .mp4 last: PyAV picks the muxer by suffix
    write_video(part, frames, fps=fps)
    part.replace(path)
    return path
