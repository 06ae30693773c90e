"""`ipa select auto|review|curate`."""

from __future__ import annotations

from . import curate


def _auto(args):
    from .auto import auto_select
    from .candidates import chosen

    if args.top < 0:
        raise ValueError(f"--top: must be >= 0 (0: no limit), got {args.top}")
    sel = auto_select(args.candidates, args.out, top=None if args.top == 0 else args.top,
                      threshold=args.threshold, hand_model=args.hand_model)
    print(f"scored {len(sel['candidates'])} candidates, {len(chosen(sel))} chosen; wrote {args.out}")


def _review(args):
    from .review import serve

    server = serve(args.candidates, args.selection, host=args.host, port=args.port)
    host, port = server.server_address[:2]
    print(f"review page: http://{host}:{port}/  (marks are saved to {args.selection} on every click; Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def register(sub):
    p = sub.add_parser("select")
    sp = p.add_subparsers(dest="select_command", metavar="SUBCOMMAND", required=True)
    a = sp.add_parser("auto", help="score candidates' hands with MediaPipe and keep the best per condition")
    a.add_argument("--candidates", required=True, help="folder written by `ipa generate`")
    a.add_argument("--out", required=True, help="selection.json to write (human marks in it are kept)")
    a.add_argument("--top", type=int, default=1, help="keep the N best per condition (0: no limit)")
    a.add_argument("--threshold", type=float, help="keep only candidates scoring at least this")
    a.add_argument("--hand-model", help="MediaPipe hand bundle (default: `ipa hands model`'s)")
    a.set_defaults(func=_auto)
    r = sp.add_parser("review", help="local web page to mark candidates good/bad")
    r.add_argument("--candidates", required=True)
    r.add_argument("--selection", required=True, help="selection.json from `ipa select auto`")
    r.add_argument("--port", type=int, default=8765)
    r.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1: this machine only)")
    r.set_defaults(func=_review)
    curate.register(sp)
