"""Triton kernels of `ipa`, installed as `ipa.kernels`.

One module per op (`halo.py`: the HALO-weighted squared error behind every loss in `ipa.ops`).
Import them through `ipa.ops`, which validates inputs and picks a backend; these launchers assume
contiguous, validated tensors. Set TRITON_INTERPRET=1 before importing to run them on CPU tensors.
"""

if __name__ == "kernels":
    # Imported as a top-level `kernels`: the repo root is on sys.path (`python -m ...` run from it), and
    # this folder shadows Hugging Face's `kernels` package, which transformers (>= 5.25) imports. Hand
    # the name over to that package when it is installed; the import system returns what sys.modules
    # holds once this file has run.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _spec = importlib.machinery.PathFinder.find_spec(
        "kernels", [p for p in sys.path if os.path.abspath(p or os.curdir) != _root])
    if _spec is not None and _spec.loader is not None:
        _real = importlib.util.module_from_spec(_spec)
        sys.modules["kernels"] = _real
        _spec.loader.exec_module(_real)
