"""Reading images and videos, writing PNG previews and MP4s (OpenCV for images, PyAV for video)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def is_video(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def read_image(path) -> np.ndarray:
    """RGB uint8 `[H, W, 3]`."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"could not read image {str(path)!r}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_image(path, rgb: np.ndarray) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)):
        raise ValueError(f"could not write image {str(path)!r}")


def read_video(path) -> tuple[np.ndarray, float]:
    """All frames as RGB uint8 `[T, H, W, 3]`, and the frame rate."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 30)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except (av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"could not decode video {str(path)!r}: {e}") from e
    if not frames:
        raise ValueError(f"video {str(path)!r} has no frames")
    return np.stack(frames), fps


def write_video(path, frames, fps: float = 16.0) -> None:
    """H.264 MP4 (yuv420p, so sizes are padded to even numbers) from RGB uint8 `[T, H, W, 3]`."""
    import av

    frames = np.asarray(frames)
    T, H, W, _ = frames.shape
    pad = ((0, 0), (0, H % 2), (0, W % 2), (0, 0))
    frames = np.pad(frames, pad) if (H % 2 or W % 2) else frames
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
