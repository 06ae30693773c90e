"""`ipa bench ops` end to end at a toy size: the CSV it writes, and on CUDA the CUDA-graph timing
path (capture of every implementation, torch.compile's included), so a lent GPU's minutes are not
spent finding a bug in it. The numbers themselves are not checked (no timed tests)."""

import csv

import pytest
import torch

from benchmarks import ops


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_ops_bench_writes_rows_for_every_implementation(device, tmp_path, monkeypatch):
    monkeypatch.setitem(ops.SIZES, "toy", (2, 3, 3, 5, 7))
    # CPU: compile is left out (its C++ build costs CI ~20 s and the path is the same as fused);
    # CUDA: all three, since capturing the compiled step in a graph is the part worth proving.
    # Each dtype is a compile of its own on CUDA (~20 s): one is enough to prove the capture there.
    impls = ["fused", "eager"] if device == "cpu" else list(ops.IMPLS)
    dtypes = ["bf16", "fp32"] if device == "cpu" else ["bf16"]
    argv = ["--device", device, "--sizes", "toy", "--dtypes", *dtypes, "--impls", *impls,
            "--budget", "0", "--min-reps", "2", "--rotate-mb", "1", "--max-sets", "2",  # two input sets
            "--out-dir", str(tmp_path)]
    assert ops.main(argv) == 0
    stem = f"ops-{'cpu' if device == 'cpu' else ops.device_slug(torch.device('cuda'))}"
    with open(tmp_path / f"{stem}.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["dtype"], r["impl"]) for r in rows] == [(d, i) for d in dtypes for i in impls]
    assert {r["timing"] for r in rows} == {"call" if device == "cpu" else "cuda graph"}
    for r in rows:
        assert float(r["median_ms"]) > 0 and float(r["call_ms"]) > 0 and int(r["reps"]) >= 2
        assert float(r["grad_rel_err_vs_eager"]) < (1e-2 if r["dtype"] == "bf16" else 1e-5)
    assert (tmp_path / f"{stem}.png").stat().st_size > 0

