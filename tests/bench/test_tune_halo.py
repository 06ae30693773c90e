"""benchmarks/tune_halo.py tunes on a GPU; here its sweep runs in Triton's interpreter on a small
odd shape (timing replaced: the interpreter's times mean nothing), which checks what a GPU run
relies on: every launch configuration of the forward, backward and fold kernels computes the same
result, including planes that split into several blocks and a partial last one."""

import pytest
import torch

from benchmarks import ops, tune_halo
from ipa.kernels import halo


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


def test_refuses_to_run_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit):
        tune_halo.main([])
    assert "needs a CUDA device" in capsys.readouterr().err


def test_step_sweep_stages_compute_the_same(monkeypatch):
    """The one-pass step's sweep: each stage starts from the previous best, and every
    configuration (leads, several blocks per plane) gives the first one's gradient."""
    monkeypatch.setattr(tune_halo, "STEP_STAGES", (
        [(None, None, None, None, 0, True), (None, None, None, None, 1, False)],
        [(32, 64, 1, None, None, None)],
        [(None, None, None, 1, None, None)],
    ))
    times = iter([3e-3, 2e-3, 1e-3, 4e-3])  # stage 1 picks lead 1; stage 2's blocks win stage 3 too

    def run_once(fns, device, budget_s=0.0):
        for fn in fns:
            fn()
        return next(times)

    monkeypatch.setattr(tune_halo, "graph_ms", run_once)
    monkeypatch.setattr(ops, "fused_loss", lambda pred, ref, target, t, mask: ops.flow_ipa_loss(
        pred, target, t, mask, ref_pred=ref, beta=ops.BETA, backend="triton")[0])
    sets = ops.make_sets((2, 3, 4, 10, 13), torch.float32, torch.device("cpu"), 2)
    rows, best = tune_halo.sweep_step(sets, torch.float32, copy_gbps=1.0)
    shipped = halo.STEP_CONFIG
    assert [r["config"] for r in rows] == [
        tune_halo.step_label(shipped[:4] + (0, True)), tune_halo.step_label(shipped[:4] + (1, False)),
        tune_halo.step_label((32, 64, 1, shipped[3], 1, False)), tune_halo.step_label((32, 64, 1, 1, 1, False))]
    assert best == (32, 64, 1, shipped[3], 1, False)
    for r in rows:
        assert r["kernel"] == "step" and float(r["rel_err_vs_first"]) < 1e-6, r
