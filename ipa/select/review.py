"""`ipa select review`: a local page to mark candidates good or bad, saved on every click.

Standard-library HTTP server, one self-contained page (inline CSS/JS, no CDN: it works offline).
Each condition is a row: the driving pose video and reference frame, then its candidates side by
side (looping video, enlarged hand crop, auto scores). Mouse: the good/bad buttons (a second
click clears). Keyboard: arrows move, g / b mark good / bad, x clears. Every change is POSTed and
written to selection.json atomically before the server answers, so nothing is lost on reload or
crash; the page renders from what the server saved.
"""

from __future__ import annotations

import json
import mimetypes
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .candidates import LABELS, load_candidates, read_selection, run_info, write_selection
from .crops import CROP_FILE, write_hand_crops
from .page import HTML



class ReviewState:
    """The selection file and the folders the page may read, behind one lock."""

    def __init__(self, candidates_dir, selection_path, *, make_crops=True):
        import numpy as np

        from ipa.data.prepare import condition_dir

        self.root = Path(candidates_dir).resolve()
        self.conditions = Path(run_info(self.root)["conditions"])
        self.path = Path(selection_path)
        self.lock = threading.Lock()
        self.candidates = load_candidates(self.root)
        selection = read_selection(self.path)
        missing = [c.key for c in self.candidates if c.key not in selection["candidates"]]
        if missing:
            raise ValueError(f"selection {str(self.path)!r} has no entry for {missing[:3]} "
                             f"(rerun `ipa select auto --candidates {self.root} --out {self.path}`)")
        self.crops = {}
        if make_crops:
            for c in self.candidates:
                hands = condition_dir(self.conditions, c.condition) / "hands.npy"
                if hands.is_file() and write_hand_crops(c.video, np.load(hands), c.folder / CROP_FILE):
                    self.crops[c.key] = True

    def state(self) -> dict:
        with self.lock:
            selection = read_selection(self.path)
        rows = {}
        for c in self.candidates:
            entry = selection["candidates"][c.key]
            rows.setdefault(c.condition, []).append({
                "key": c.key, "index": c.index, "video": f"/files/{c.key}/video.mp4",
                "crop": f"/files/{c.key}/{CROP_FILE}" if c.key in self.crops else None,
                "score": entry.get("score"), "scores": entry.get("scores", {}), "rank": entry.get("rank"),
                "auto": entry.get("auto", False), "human": entry.get("human")})
        return {"selection": str(self.path), "conditions": [
            {"id": cid, "pose": f"/conditions/{cid}/pose.mp4", "reference": f"/conditions/{cid}/reference.png",
             "candidates": cands} for cid, cands in rows.items()]}

    def label(self, key: str, label) -> dict:
        if label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {label!r}")
        with self.lock:  # read-modify-write of one file by concurrent requests
            selection = read_selection(self.path)
            if key not in selection["candidates"]:
                raise ValueError(f"unknown candidate {key!r}")
            selection["candidates"][key]["human"] = label
            write_selection(self.path, selection)
        return {"key": key, "human": label}

    def file(self, route: str) -> Path | None:
        """The file behind /files/... or /conditions/..., or None (never outside those folders)."""
        m = re.fullmatch(r"/(files|conditions)/([^/]+)/(?:(cand-\d+)/)?([\w.-]+)", route)
        if not m or ".." in route:
            return None
        kind, cond, cand, name = m.groups()
        base = self.root / cond / cand if kind == "files" and cand else (
            self.conditions / "conditions" / cond if kind == "conditions" and not cand else None)
        path = base / name if base else None
        return path if path and path.is_file() else None


def make_handler(state: ReviewState):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the terminal shows the URL, not every request
            pass

        def _send(self, code, body: bytes, ctype: str, headers=()):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj, code=HTTPStatus.OK):
            self._send(code, json.dumps(obj).encode(), "application/json")

        def do_GET(self):
            route = self.path.split("?", 1)[0]
            if route in ("/", "/index.html"):
                return self._send(HTTPStatus.OK, HTML.encode(), "text/html; charset=utf-8")
            if route == "/api/state":
                return self._json(state.state())
            path = state.file(route)
            if path is None:
                return self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            data = path.read_bytes()
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            rng = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
            if rng and (rng.group(1) or rng.group(2)):  # video elements seek (and loop) with ranges
                start = int(rng.group(1)) if rng.group(1) else max(0, len(data) - int(rng.group(2)))
                end = int(rng.group(2)) if rng.group(1) and rng.group(2) else len(data) - 1
                end = min(end, len(data) - 1)
                return self._send(HTTPStatus.PARTIAL_CONTENT, data[start:end + 1], ctype,
                                  [("Content-Range", f"bytes {start}-{end}/{len(data)}"), ("Accept-Ranges", "bytes")])
            self._send(HTTPStatus.OK, data, ctype, [("Accept-Ranges", "bytes")])

        do_HEAD = do_GET

        def do_POST(self):
            if self.path != "/api/label":
                return self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                self._json(state.label(body.get("key"), body.get("label")))
            except (ValueError, AttributeError) as e:
                self._json({"error": str(e)}, HTTPStatus.BAD_REQUEST)

    return Handler


def serve(candidates_dir, selection, *, host="127.0.0.1", port=8765, make_crops=True) -> ThreadingHTTPServer:
    """A started-not-yet-serving server (call `serve_forever`); port 0 picks a free port."""
    state = ReviewState(candidates_dir, selection, make_crops=make_crops)
    server = ThreadingHTTPServer((host, port), make_handler(state))
    server.daemon_threads = True
    server.state = state
    return server
