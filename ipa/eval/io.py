"""Loading videos for evaluation: video files through PyAV, or folders of frame images.

A *video collection* is a folder whose entries are videos, each either a video file
(`.mp4 .avi .mov .mkv .webm .gif`) or a sub-folder of frame images (`.png .jpg .jpeg .bmp .webp`,
taken in natural sort order). Videos are matched across collections by name (the file stem or the
folder name), so `generated/seq01.mp4` pairs with `reference/seq01/` as well as with
`reference/seq01.mp4`.

Frames come back as RGB `uint8` arrays `[T, H, W, 3]`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def list_videos(folder, arg: str = "folder") -> dict[str, Path]:
    """Name -> path of every video (file or frame folder) in `folder`, sorted by name.

    `arg` names the command-line argument or parameter in error messages.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{arg}: {str(folder)!r} is not a folder")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir(), key=_natural_key):
        if p.is_file() and p.suffix.lower() in VIDEO_EXTS:
            name = p.stem
        elif p.is_dir() and any(q.suffix.lower() in IMAGE_EXTS for q in p.iterdir()):
            name = p.name
        else:
            continue
        if name in out:
            raise ValueError(f"{arg}: two videos named {name!r} in {str(folder)!r} "
                             f"({out[name].name} and {p.name})")
        out[name] = p
    return out


def read_video(path, arg: str = "video") -> np.ndarray:
    """All frames of a video file or frame folder as RGB uint8 `[T, H, W, 3]`."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{arg}: {str(path)!r} does not exist")
    if path.is_dir():
        import cv2

        files = sorted((q for q in path.iterdir() if q.suffix.lower() in IMAGE_EXTS), key=_natural_key)
        if not files:
            raise ValueError(f"{arg}: folder {str(path)!r} holds no frame images ({', '.join(IMAGE_EXTS)})")
        frames = []
        for f in files:
            im = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if im is None:
                raise ValueError(f"{arg}: cannot read image {str(f)!r}")
            frames.append(cv2.cvtColor(im, cv2.COLOR_BGR2RGB))
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            raise ValueError(f"{arg}: frames in {str(path)!r} differ in size: {sorted(shapes)}")
        return np.stack(frames)
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except (av.FFmpegError, IndexError) as e:
        raise ValueError(f"{arg}: cannot decode video {str(path)!r}: {e}") from e
    if not frames:
        raise ValueError(f"{arg}: video {str(path)!r} has no frames")
    return np.stack(frames)


def write_video(path, frames, fps: int = 8, codec: str = "libx264", crf: int | None = None) -> Path:
    """Write RGB uint8 `[T, H, W, 3]` frames to a video file through PyAV (H, W even for libx264).

    `crf=0` with libx264 gives a lossless file (yuv444p), handy for tests.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames: expected uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        if crf is not None:
            stream.pix_fmt = "yuv444p"
            stream.options = {"crf": str(crf)}
        else:
            stream.pix_fmt = "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    return path
