"""ipa: Implicit Preference Alignment for human image animation.

Rooms (see ../shared/DESIGN.md), data flowing left to right:
`ipa.data` -> `ipa.generate` -> `ipa.select` -> `ipa.train` -> `ipa.eval`, with `ipa.hands` for
hand masks, `ipa.models` for the diffusers transformers and `ipa.ops` for the fused losses.
Submodules are imported on demand so that `import ipa.ops` stays light.
"""

__version__ = "0.1.0"
