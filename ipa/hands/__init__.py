"""Hand masks for HALO: keypoints or MediaPipe detections -> pixel masks -> latent-grid masks.

    from ipa.hands import load_keypoints, hand_masks, halo_mask
    kps = load_keypoints("clip_dwpose.npy")              # [T, NH, 21, 3], any supported format
    pixel = hand_masks(kps, (480, 832))                  # uint8 [81, 480, 832]
    mask = halo_mask(pixel)                              # [20, 60, 104]: hand_mask[b] for ipa.ops

`HandDetector` finds hands where there are no keypoints (MediaPipe Tasks API; `ipa hands model`
builds its model once). `ipa hands --help` for the command line.
"""

from .detector import Hand, HandDetector, build_model_bundle, default_model_path, resolve_model_path
from .keypoints import (MIN_CONFIDENCE, MIN_POINTS, hands_from_array, hands_from_detections, is_normalized,
                        load_keypoints, to_pixels, valid_hands)
from .latent import halo_mask, latent_mask
from .masks import hand_masks, parse_size

__all__ = [
    "Hand", "HandDetector", "build_model_bundle", "default_model_path", "resolve_model_path",
    "MIN_CONFIDENCE", "MIN_POINTS", "hands_from_array", "hands_from_detections", "load_keypoints",
    "is_normalized", "to_pixels", "valid_hands", "latent_mask", "halo_mask", "hand_masks", "parse_size",
]
