"""ipa.eval: animation metrics and hand-region metrics.

- `ipa.eval.frames`: `psnr`, `ssim` (per frame, stated variants), `LPIPS` (user weights).
- `ipa.eval.video`: `FeatureStats`, `frechet_distance`, `FeatureExtractor` (TorchScript from a
  user path) for FID, FID-VID and FVD.
- `ipa.eval.hands`: driving-pose keypoints in, hand crops, SSIM-Hand / PSNR-Hand, and the
  plausibility metrics HKC, HKV, detection rate and landmark distance.
- `ipa.eval.protocol.Protocol`: sequences, resolution, frame sampling and metric settings.
- `ipa.eval.runner.evaluate` and `ipa.eval.report.write_report`, driven by `ipa eval`.

Heavy dependencies (scikit-image, scipy, torch, MediaPipe) are imported where used.
"""

from .frames import LPIPS, psnr, ssim
from .hands import hand_box, hand_crops, hand_plausibility, load_pose_hands
from .protocol import Protocol
from .video import FeatureExtractor, FeatureStats, frechet_distance

__all__ = ["LPIPS", "psnr", "ssim", "Protocol", "FeatureStats", "FeatureExtractor", "frechet_distance",
           "hand_box", "hand_crops", "hand_plausibility", "load_pose_hands"]
