"""benchmarks/tune_halo.py tunes on a GPU; here its sweep runs in Triton's interpreter on a small
odd shape (timing replaced: the interpreter's times mean nothing), which checks what a GPU run
relies on: every launch configuration of the forward, backward and fold kernels computes the same
result, including planes that split into several blocks and a partial last one."""

import pytest
import torch

from benchmarks import ops, tune_halo


def test_every_launch_configuration_computes_the_same(monkeypatch):
    monkeypatch.setattr(tune_halo, "BLOCKS", (64, 128))
    monkeypatch.setattr(tune_halo, "WARPS", (1, 2))
    monkeypatch.setattr(tune_halo, "FOLD", [(32, 1), (256, 2)])  # 16 and 128 partials a chunk

    def run_once(fns, device, budget_s=0.0):
        for fn in fns:
            fn()
        return 1e-3

    monkeypatch.setattr(tune_halo, "graph_ms", run_once)
    sets = ops.make_sets((2, 3, 4, 10, 13), torch.float32, torch.device("cpu"), 2)  # 130-element planes
    rows = tune_halo.sweep_kernels(sets, torch.float32, copy_gbps=1.0, n_part_default=3 * 4 * 2)
    configs = {(r["kernel"], r["block"], r["warps"]) for r in rows}
    # block 64 with 2 warps is 1 element per thread: skipped, as on the GPU
    assert configs == {("fwd", 64, 1), ("fwd", 128, 1), ("fwd", 128, 2), ("bwd", 64, 1), ("bwd", 128, 1),
                       ("bwd", 128, 2), ("fold", 32, 1), ("fold", 256, 2)}
    for r in rows:
        assert float(r["rel_err_vs_first"]) < 1e-6, r
        assert r["us"] == 1.0 and r["frac_copy"] > 0


def test_refuses_to_run_without_cuda(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # runs on a GPU machine too
    with pytest.raises(SystemExit):
        tune_halo.main([])
    assert "needs a CUDA device" in capsys.readouterr().err
