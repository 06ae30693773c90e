"""Models built under `deepspeed.zero.Init` (ZeRO-3) against plain builds, one gloo rank."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.multiprocess]

# Run in a fresh process: DeepSpeed's process group and tensor-constructor patches stay out of
# the test runner.
SCRIPT = textwrap.dedent("""
    import json, sys, torch, deepspeed
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    from ipa.train import engines
    from ipa.train.config import TrainConfig

    out = {}
    for family in ("wan-vace", "wan", "wan-animate"):
        cfg = TrainConfig()
        cfg.model.family, cfg.model.dtype = family, "bfloat16"
        cfg.deepspeed.bf16, cfg.deepspeed.zero_stage = True, 3
        conf = engines.deepspeed_config(cfg, 1, width=24)
        zero3 = engines._build_model(cfg, torch.device("cpu"), conf, zero3=True)
        plain = engines._build_model(cfg, torch.device("cpu"), conf, zero3=False)
        bufs = dict(plain.named_buffers())
        out[family] = {name: [str(b.dtype), str(bufs[name].dtype), (b.double() - bufs[name].double()).abs().max().item()]
                       for name, b in zero3.named_buffers() if b.is_floating_point()}
    print("RESULT " + json.dumps(out))
""")


def test_zero3_build_has_the_plain_builds_buffers(tmp_path):
    """zero.Init casts every float tensor made inside it (torch.arange too) to bf16: the RoPE tables
    must be recomputed, or ZeRO-3 trains against rounded position angles inference never sees."""
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(29700 + os.getpid() % 200), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                          timeout=240, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    for family, buffers in result.items():
        assert any("rope.freqs_cos" in name for name in buffers), (family, sorted(buffers))
        for name, (dtype_zero3, dtype_plain, max_diff) in buffers.items():
            assert dtype_zero3 == dtype_plain, (family, name)
            assert max_diff == 0.0, (family, name, max_diff)
