"""Triton kernels of `ipa`, installed as `ipa.kernels`.

One module per op (`halo.py`: the HALO-weighted squared error behind every loss in `ipa.ops`).
Import them through `ipa.ops`, which validates inputs and picks a backend; these launchers assume
contiguous, validated tensors. Set TRITON_INTERPRET=1 before importing to run them on CPU tensors.
"""
