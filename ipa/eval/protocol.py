"""Evaluation protocol: which sequences, at what resolution, which frames, and metric settings.

Published human-animation evaluations (TikTok, UBC-Fashion, ...) differ in the test sequences, the
resolution frames are compared at and the frames sampled, so all of it is configuration. A YAML
file with any subset of the fields of `Protocol` (unknown keys are an error):

```yaml
sequences: [seq335, seq336, seq337]   # names to evaluate (default: every name in both folders)
resolution: [512, 512]                # H, W both videos are resized to (default: keep; must match)
start: 0                              # first frame kept
stride: 1                             # keep every stride-th frame after start
max_frames: null                      # cap on frames kept per video
hand_crop_size: 128                   # side of the square hand crops, pixels
hand_padding: 0.25                    # crop box = hand box side * (1 + 2 * padding)
hand_min_confidence: 0.3              # pose keypoints below this confidence are ignored
hand_min_points: 5                    # a pose hand needs this many confident points
clip_len: 16                          # frames per clip for video features (FID-VID, FVD)
lpips_weights: null                   # path: TorchScript LPIPS or lpips state dict
lpips_net: alex
extractors: {}                        # name -> extractor spec, see ipa.eval.video.load_extractor
```
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Protocol:
    #: names of the videos to evaluate; None: every name present in both the generated and the
    #: reference folder (a listed name missing from either folder is an error)
    sequences: list[str] | None = None
    #: (H, W) both generated and reference frames are resized to (cv2 INTER_AREA when shrinking,
    #: INTER_CUBIC when enlarging); None keeps sizes, which must then match
    resolution: tuple[int, int] | None = None
    #: index of the first frame kept
    start: int = 0
    #: keep frames start, start + stride, ...
    stride: int = 1
    #: keep at most this many frames per video (after start/stride); None keeps all
    max_frames: int | None = None
    #: side in pixels of the square hand crops SSIM-Hand / PSNR-Hand are computed on
    hand_crop_size: int = 128
    #: the crop box is the hand's keypoint box made square and grown by this fraction on each side
    hand_padding: float = 0.25
    #: pose keypoints with confidence below this are ignored
    hand_min_confidence: float = 0.3
    #: a pose hand counts only with at least this many confident keypoints
    hand_min_points: int = 5
    #: a detected hand matches a pose hand when their mean landmark distance is below this many
    #: pose-hand sizes (size = diagonal of the pose hand's keypoint box)
    hand_match_threshold: float = 1.0
    #: number of frames per clip fed to video feature extractors (FID-VID, FVD)
    clip_len: int = 16
    #: LPIPS weights: TorchScript file, or a state dict for the `lpips` package; None skips LPIPS
    lpips_weights: str | None = None
    #: backbone name when lpips_weights is an `lpips` package state dict
    lpips_net: str = "alex"
    #: metric name -> feature extractor spec (see ipa.eval.video.load_extractor)
    extractors: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.sequences is not None:
            if isinstance(self.sequences, str) or not all(isinstance(s, str) for s in self.sequences):
                raise ValueError(f"sequences: expected a list of names, got {self.sequences!r}")
            self.sequences = list(self.sequences)
        if self.resolution is not None:
            try:
                res = tuple(int(v) for v in self.resolution)
            except (TypeError, ValueError):
                res = ()
            if len(res) != 2 or min(res) <= 0:
                raise ValueError(f"resolution: expected [H, W] with positive sizes, got {self.resolution!r}")
            self.resolution = res
        for name in ("stride", "clip_len", "hand_crop_size", "hand_min_points"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if self.start < 0:
            raise ValueError(f"start: expected >= 0, got {self.start!r}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames: expected >= 1 or null, got {self.max_frames!r}")
        if self.hand_padding < 0:
            raise ValueError(f"hand_padding: expected >= 0, got {self.hand_padding!r}")
        if not isinstance(self.extractors, dict):
            raise ValueError(f"extractors: expected a mapping name -> spec, got {self.extractors!r}")

    @classmethod
    def from_yaml(cls, path) -> "Protocol":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"protocol: {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"protocol: {str(path)!r} is not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"protocol: {str(path)!r} must hold a mapping of fields")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> "Protocol":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"protocol: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["resolution"] is not None:
            d["resolution"] = list(d["resolution"])
        return d

    def frame_indices(self, n: int) -> np.ndarray:
        """Indices of the frames kept out of `n`."""
        idx = np.arange(self.start, n, self.stride)
        if self.max_frames is not None:
            idx = idx[: self.max_frames]
        return idx

    def apply(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """Sample and resize `[T, H, W, 3]` frames.

        Returns (frames, kept indices, (sx, sy)) where sx, sy scale pixel coordinates of the input
        to the output (for keypoints given in the input's pixels).
        """
        idx = self.frame_indices(len(frames))
        if len(idx) == 0:
            raise ValueError(f"start: {self.start} leaves no frames of a {len(frames)}-frame video")
        frames = frames[idx]
        h, w = frames.shape[1:3]
        if self.resolution is None or self.resolution == (h, w):
            return frames, idx, (1.0, 1.0)
        import cv2

        H, W = self.resolution
        interp = cv2.INTER_AREA if H * W < h * w else cv2.INTER_CUBIC
        out = np.stack([cv2.resize(f, (W, H), interpolation=interp) for f in frames])
        return out, idx, (W / w, H / h)
