"""`ipa select auto`: score each candidate's hands with MediaPipe and keep the best per condition.

Scores of one candidate, all in [0, 1] except jitter:

- ``detection``: of the hands the driving pose shows (valid `hands.npy` hands per frame), the
  fraction MediaPipe finds in the generated frames (1 when the pose shows none).
- ``confidence``: mean MediaPipe hand score of the detections (0 without any).
- ``jitter``: mean frame-to-frame landmark motion of a tracked hand after removing its
  translation, relative to the hand's size. Drawn hands that flicker or melt move their fingers
  much more than real hands between frames at video rates.
- ``agreement``: PCK of the detected landmarks against the pose's hand keypoints (fraction within
  `pck` times the hand size), over the pose's hands; a missed hand counts 0.

``score`` = weighted sum of detection, confidence, agreement and ``max(0, 1 - jitter / 0.5)``.
"""

from __future__ import annotations

import numpy as np

WEIGHTS = {"detection": 0.35, "confidence": 0.15, "agreement": 0.35, "stability": 0.15}
JITTER_SCALE = 0.5  # jitter at which stability reaches 0
PCK = 0.3


def _size(xy: np.ndarray) -> float:
    ext = xy.max(0) - xy.min(0)
    return float(max(ext.max(), 1.0))


def hand_scores(detections, pose_hands, *, pck: float = PCK) -> dict:
    """Scores (see the module docstring) from per-frame detections and the pose's `[T, NH, 21, 3]`."""
    from ipa.hands import valid_hands

    T = len(detections)
    pose_hands = np.asarray(pose_hands, dtype=np.float64)
    if len(pose_hands) != T:
        raise ValueError(f"pose hands have {len(pose_hands)} frames but the candidate video has {T}")
    valid = valid_hands(pose_hands)
    expected = int(valid.sum())
    found, pck_sum, conf, motion = 0, 0.0, [], []
    for t in range(T):
        dets = detections[t]
        conf += [h.score for h in dets]
        centres = [np.asarray(h.landmarks)[:, :2].mean(0) for h in dets]
        for i in np.nonzero(valid[t])[0]:
            ph = pose_hands[t, i]
            ok = ph[:, 2] >= 0.3
            if not dets:
                continue
            j = int(np.argmin([np.linalg.norm(c - ph[ok, :2].mean(0)) for c in centres]))
            d = np.linalg.norm(np.asarray(dets[j].landmarks)[ok, :2] - ph[ok, :2], axis=1)
            found += 1
            pck_sum += float((d <= pck * _size(ph[ok, :2])).mean())
        if t and detections[t - 1] and dets:  # track: nearest previous hand by centre
            prev = [np.asarray(h.landmarks)[:, :2] for h in detections[t - 1]]
            for h in dets:
                cur = np.asarray(h.landmarks)[:, :2]
                p = min(prev, key=lambda q: np.linalg.norm(q.mean(0) - cur.mean(0)))
                shape_change = (cur - cur.mean(0)) - (p - p.mean(0))
                motion.append(float(np.linalg.norm(shape_change, axis=1).mean()) / _size(cur))
    scores = {
        "detection": 1.0 if expected == 0 else min(found, expected) / expected,
        "confidence": float(np.mean(conf)) if conf else 0.0,
        "jitter": float(np.mean(motion)) if motion else (0.0 if expected == 0 else 1.0),
        "agreement": 1.0 if expected == 0 else pck_sum / expected,
        "frames": T, "pose_hands": expected, "detected_hands": len(conf),
    }
    return scores


def combine(scores: dict, weights: dict = WEIGHTS) -> float:
    parts = dict(scores, stability=max(0.0, 1.0 - scores["jitter"] / JITTER_SCALE))
    return float(sum(w * parts[k] for k, w in weights.items()) / sum(weights.values()))


def score_candidates(candidates_dir, *, detector=None, hand_model=None, progress=True) -> dict:
    """{candidate key: scores} for every candidate in `candidates_dir` (see `load_candidates`)."""
    from tqdm.auto import tqdm

    from ipa.data.prepare import condition_dir
    from ipa.data.video import decode_video
    from ipa.hands import HandDetector

    from .candidates import load_candidates, run_info, sample_identity

    conditions = run_info(candidates_dir)["conditions"]
    cands = load_candidates(candidates_dir)
    own = detector is None
    detector = detector or HandDetector(hand_model)
    out = {}
    try:
        for c in tqdm(cands, desc="scoring hands", unit="video", disable=not progress):
            hands_file = condition_dir(conditions, c.condition) / "hands.npy"
            if not hands_file.is_file():
                raise ValueError(f"pose hands {str(hands_file)!r} are missing (the conditions dataset of "
                                 f"candidate {str(c.folder)!r})")
            frames, fps = decode_video(c.video)
            scores = hand_scores(detector.detect_video(frames, fps=fps), np.load(hands_file))
            out[c.key] = {"condition": c.condition, "candidate": c.index, "seed": c.meta.get("seed"),
                          "sample": sample_identity(c.meta),
                          "scores": scores, "score": combine(scores)}
    finally:
        if own:
            detector.close()
    return out


def select(scored: dict, *, top: int | None = 1, threshold: float | None = None) -> dict:
    """Rank candidates per condition; `auto` = within the `top` best and at least `threshold`."""
    if top is None and threshold is None:
        raise ValueError("give top (best N per condition) or threshold (minimum score), or both")
    by_cond = {}
    for key, c in scored.items():
        by_cond.setdefault(c["condition"], []).append(key)
    out = {}
    for keys in by_cond.values():
        keys.sort(key=lambda k: (-scored[k]["score"], scored[k]["candidate"]))  # ties: lower index first
        for rank, k in enumerate(keys, 1):
            keep = (top is None or rank <= top) and (threshold is None or scored[k]["score"] >= threshold)
            out[k] = {**scored[k], "rank": rank, "auto": bool(keep), "human": None}
    return out


def auto_select(candidates_dir, out, *, top=1, threshold=None, detector=None, hand_model=None, progress=True):
    """Score, rank and write `out` (selection.json); human labels already in `out` are kept."""
    from pathlib import Path

    from .candidates import changed_samples, load_candidates, read_selection, write_selection

    old = read_selection(out)["candidates"] if Path(out).is_file() else {}
    marked = {k: e for k, e in old.items() if e.get("human") is not None}
    moved = changed_samples(marked, load_candidates(candidates_dir))  # checked before the slow scoring
    if moved:
        raise ValueError(f"--out {str(out)!r} holds a person's marks for other candidates than --candidates "
                         f"{str(candidates_dir)!r} has ({'; '.join(moved[:3])}{'; ...' if len(moved) > 3 else ''}): "
                         "rescoring would move them to other videos or drop them; use another --out")
    cands = select(score_candidates(candidates_dir, detector=detector, hand_model=hand_model, progress=progress),
                   top=top, threshold=threshold)
    for key, entry in old.items():  # rescoring keeps a person's review (on the same samples: checked)
        if key in cands:
            cands[key]["human"] = entry.get("human")
    selection = {"version": 1, "candidates_dir": str(Path(candidates_dir).resolve()),
                 "auto": {"method": "mediapipe-hands", "weights": WEIGHTS, "top": top, "threshold": threshold},
                 "candidates": dict(sorted(cands.items()))}
    write_selection(out, selection)
    return selection
