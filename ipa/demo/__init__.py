"""End-to-end miniature of the paper on CPU (`ipa demo`, `make demo`).

- `render`: a procedurally drawn figure (body, arms, one gloved hand with 5 articulated fingers)
  following a keypoint sequence, plus its DWPose-style skeleton video.
- `task`: conditions (random smooth motion), ground truth from the renderer, hand masks on the
  latent grid, and an exact, VAE-free pixel <-> latent map.
- `pretrain`: flow-matching pretraining of a tiny WanVACE transformer (the "base model").
- `experiment`: self-generate, auto-select, curate, train (base / SFT / SFT+HALO / IPA / IPA+HALO,
  beta sweep, several seeds) through `ipa train`, evaluate on held-out conditions.
- `report`: Markdown table, bar chart, hand-crop strip.
"""
