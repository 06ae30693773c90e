"""Hand detection with MediaPipe's Tasks API (`HandLandmarker`), and the model bundle it loads.

The model: `model_path`, else `$IPA_HAND_MODEL`, else the cached bundle `ipa hands model` builds.
MediaPipe's current releases no longer ship hand models inside the wheel; 0.10.21 is the last that
did. `build_model_bundle` downloads that wheel once (pip, the only network access in `ipa.hands`),
takes `palm_detection_full.tflite` and `hand_landmark_full.tflite` and stores them as
`hand_detector.tflite` / `hand_landmarks_detector.tflite` in an uncompressed zip, which the Tasks
API loads as a hand_landmarker bundle.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_ENV = "IPA_HAND_MODEL"
NATIVE_LOGS_ENV = "IPA_MEDIAPIPE_LOGS"
SOURCE_WHEEL = "mediapipe==0.10.21"
BUNDLE_ENTRIES = {
    "hand_detector.tflite": "mediapipe/modules/palm_detection/palm_detection_full.tflite",
    "hand_landmarks_detector.tflite": "mediapipe/modules/hand_landmark/hand_landmark_full.tflite",
}


@dataclass
class Hand:
    """One detected hand: `landmarks` float `[21, 2]` (pixel x, y; MediaPipe's point order),
    `score` (handedness classifier confidence, MediaPipe's per-hand score) and `handedness`
    ("Left"/"Right" as MediaPipe labels it, i.e. as seen in a mirrored selfie view)."""

    landmarks: np.ndarray
    score: float
    handedness: str


def default_model_path() -> Path:
    cache = Path(os.environ.get("IPA_CACHE_DIR", Path.home() / ".cache" / "ipa"))
    return cache / "hand_landmarker.task"


def resolve_model_path(model_path=None) -> Path:
    """The bundle to load, or FileNotFoundError saying how to get one."""
    for candidate, origin in ((model_path, "model_path"), (os.environ.get(MODEL_ENV), f"${MODEL_ENV}")):
        if candidate:
            path = Path(candidate)
            if not path.is_file():
                raise FileNotFoundError(f"{origin} {str(path)!r} is not a file")
            return path
    path = default_model_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"no hand model: pass model_path, set ${MODEL_ENV}, or run `ipa hands model` once to build "
            f"{path} (it downloads {SOURCE_WHEEL} with pip and extracts its hand models)")
    return path


def build_model_bundle(dest=None, *, wheel=None, quiet=True) -> Path:
    """Build the hand_landmarker bundle at `dest` (default: the cache path); returns its path.

    `wheel`: a local mediapipe 0.10.21 wheel to take the models from instead of downloading it.
    The write is atomic: a failure never leaves a half-written bundle behind.
    """
    dest = Path(dest) if dest else default_model_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            # Any platform's wheel holds the same .tflite files; name one so that every host works.
            cmd = [sys.executable, "-m", "pip", "download", SOURCE_WHEEL, "--no-deps", "--only-binary=:all:",
                   "--python-version", "3.11", "--implementation", "cp", "--platform",
                   "manylinux_2_28_x86_64", "-d", tmp] + (["-q"] if quiet else [])
            done = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(Path(tmp).glob("mediapipe-*.whl"))
            if done.returncode or not wheels:
                raise RuntimeError(f"could not download {SOURCE_WHEEL} to build the hand model: "
                                   f"{(done.stderr or done.stdout).strip()[-500:]}")
            wheel = wheels[0]
        part = dest.with_suffix(dest.suffix + ".part")
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(part, "w", compression=zipfile.ZIP_STORED) as out:
            for name, member in BUNDLE_ENTRIES.items():
                out.writestr(name, src.read(member))
        os.replace(part, dest)
    return dest


def _check_image(image, arg="image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{arg} must be an RGB uint8 array [H, W, 3], got {image.dtype} {list(image.shape)}")
    return np.ascontiguousarray(image)


@contextlib.contextmanager
def native_logs_held():
    """MediaPipe's C++ (LiteRT, XNNPACK, glog) writes ~15 INFO/WARNING lines straight to file
    descriptor 2 per detector, with no switch to turn them off (google-ai-edge/mediapipe#5737).
    Hold what fd 2 receives in a temporary file: dropped when the block succeeds, written out when it
    raises (it is the diagnosis). fd 2 is process-wide: other threads' stderr in the window (a
    MediaPipe call long) is held with it. `IPA_MEDIAPIPE_LOGS=1` lets everything through."""
    if os.environ.get(NATIVE_LOGS_ENV) == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as held:
            os.dup2(held.fileno(), 2)
            try:
                yield
            except BaseException:
                os.dup2(saved, 2)
                held.seek(0)
                os.write(2, held.read())
                raise
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


class HandDetector:
    """MediaPipe HandLandmarker for single images (`detect`) and videos (`detect_video`).

    Use as a context manager, or call `close()`, to release MediaPipe's graph.
    """

    def __init__(self, model_path=None, *, max_hands: int = 4, min_detection_confidence: float = 0.3,
                 min_presence_confidence: float = 0.5, min_tracking_confidence: float = 0.5):
        self.model_path = resolve_model_path(model_path)
        self._settings = dict(num_hands=max_hands, min_hand_detection_confidence=min_detection_confidence,
                              min_hand_presence_confidence=min_presence_confidence,
                              min_tracking_confidence=min_tracking_confidence)
        self._image = self._landmarker("IMAGE")

    def _landmarker(self, mode):
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.HandLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.model_path)),
            running_mode=getattr(vision.RunningMode, mode), **self._settings)
        with native_logs_held():
            return vision.HandLandmarker.create_from_options(options)

    @staticmethod
    def _hands(result, width, height) -> list[Hand]:
        hands = []
        for marks, cls in zip(result.hand_landmarks, result.handedness):
            xy = np.array([[p.x * width, p.y * height] for p in marks], dtype=np.float32)
            hands.append(Hand(landmarks=xy, score=float(cls[0].score), handedness=cls[0].category_name))
        return hands

    def detect(self, image) -> list[Hand]:
        """Hands in one RGB uint8 image `[H, W, 3]`."""
        import mediapipe as mp

        image = _check_image(image)
        with native_logs_held():
            result = self._image.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
        return self._hands(result, image.shape[1], image.shape[0])

    def detect_video(self, frames, fps: float = 30.0, progress: bool = False) -> list[list[Hand]]:
        """Hands per frame of a clip (`[T, H, W, 3]` uint8 or an iterable of frames), tracked
        across frames in MediaPipe's VIDEO mode (a fresh tracker per call)."""
        import mediapipe as mp
        from tqdm.auto import tqdm

        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps!r}")
        out = []
        video = self._landmarker("VIDEO")
        try:  # the logs are held call by call: the progress bar writes to fd 2 between them
            for t, frame in enumerate(tqdm(frames, desc="detecting hands", unit="frame", disable=not progress)):
                frame = _check_image(frame, f"frames[{t}]")
                with native_logs_held():
                    result = video.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB, data=frame),
                                                    int(round(t * 1000 / fps)))
                out.append(self._hands(result, frame.shape[1], frame.shape[0]))
        finally:
            with native_logs_held():
                video.close()
        return out

    def close(self):
        if self._image is not None:
            with native_logs_held():
                self._image.close()
            self._image = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
