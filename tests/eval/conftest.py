import numpy as np
import pytest
import torch


class TinyFrameNet(torch.nn.Module):
    """Random frame feature extractor: [N, 3, H, W] -> [N, 6]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2)

    def forward(self, x):
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))


class TinyVideoNet(torch.nn.Module):
    """Random clip feature extractor: [N, 3, T, H, W] -> [N, 5]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv3d(3, 5, 3, stride=2)

    def forward(self, x):
        return torch.tanh(self.conv(x)).mean(dim=(2, 3, 4))


class TinyLPIPS(torch.nn.Module):
    """LPIPS-shaped stand-in: mean squared difference of unit-normalized conv features, [N]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x, y):
        fx, fy = self.conv(x), self.conv(y)
        fx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
        fy = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
        return ((fx - fy) ** 2).sum(1).mean(dim=(1, 2))


@pytest.fixture
def scripted(tmp_path):
    """Save a module as TorchScript (trace) or a torch.export program: save(module, name, inputs, fmt)."""

    def save(module, name, inputs, fmt="torchscript"):
        if fmt == "torchscript":
            path = tmp_path / f"{name}.pt"
            torch.jit.trace(module, inputs).save(str(path))
        else:
            from torch.export import Dim

            path = tmp_path / f"{name}.pt2"
            dims = {0: Dim.AUTO} | {d: Dim.AUTO for d in range(2, inputs[0].ndim)}
            inputs = tuple(torch.randn_like(i) for i in inputs)  # distinct tensors: export dedups aliases
            ep = torch.export.export(module, inputs, dynamic_shapes=(dims,) * len(inputs))
            torch.export.save(ep, str(path))
        return path

    return save


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def moving_video(t=9, h=48, w=64, seed=0):
    """A textured square moving over a gradient: uint8 [T, H, W, 3]."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, np.full_like(xx, 128.0)], -1)
    tex = r.integers(0, 256, (16, 16, 3))
    out = []
    for i in range(t):
        f = base.copy()
        x0, y0 = 4 + (3 * i) % (w - 24), 8 + i % (h - 24)
        f[y0 : y0 + 16, x0 : x0 + 16] = tex
        out.append(f)
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)
