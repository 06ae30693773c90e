"""The C++ kernels' instruction-set variants (csrc/halo.cpp, "The variants").

`make install` builds one variant for this CPU ("native"). A portable build (`pip install`
without IPA_BUILD_NATIVE, what a wheel ships) compiles the element loops for baseline x86-64,
AVX2 and AVX-512 and picks the best one the CPU runs. This builds that portable extension once,
with setup.py's own flags, and runs every variant this CPU supports through the public ops
against the PyTorch reference.
"""

import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ipa.ops import _backends, flow_ipa_loss, halo_error, reference

from .test_halo_error import make_inputs

ROOT = Path(__file__).resolve().parents[2]
ODD = (2, 3, 5, 7, 37)  # W = 37: the vector loops' remainders are exercised at every width


def _cpu_flags():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def test_installed_module_reports_its_variant():
    cpp = _backends._load("cpp")
    if cpp is None:
        pytest.skip("ipa._C is not built")
    chosen = cpp.isa()
    assert chosen in cpp.isas() and _backends.follow_torch_isa(cpp) == chosen  # set when loaded
    with pytest.raises(ValueError, match="not a kernel variant this CPU runs; choose from: "):
        cpp.set_isa("sse9")
    assert cpp.isa() == chosen  # a refused choice changes nothing


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    """The portable extension, built into a temporary folder and loaded beside ipa._C."""
    if platform.machine() != "x86_64":
        pytest.skip("the instruction-set variants are x86-64 only")
    tmp = tmp_path_factory.mktemp("portable-build")
    env = {k: v for k, v in os.environ.items() if k != "IPA_BUILD_NATIVE"}
    cmd = [sys.executable, "setup.py", "-q", "build_ext",
           "--build-lib", str(tmp / "lib"), "--build-temp", str(tmp / "obj")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (so,) = (tmp / "lib" / "ipa").glob("_C*.so")
    spec = importlib.util.spec_from_file_location("_C", so)  # the name its init function has
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def use_portable(portable, monkeypatch):
    """Route backend="cpp" through the portable module; restore its default variant after."""
    monkeypatch.setitem(_backends._status, "cpp", portable)
    yield portable
    portable.set_isa(portable.isas()[0])


@pytest.mark.slow
def test_portable_build_offers_what_the_cpu_runs(portable):
    isas, flags = portable.isas(), _cpu_flags()
    assert isas[-1] == "baseline" and portable.isa() == isas[0]
    has_avx2 = {"avx2", "fma", "f16c", "bmi1", "bmi2", "popcnt"} <= flags
    has_avx512 = has_avx2 and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
    assert ("avx2" in isas) == has_avx2
    assert ("avx512" in isas) == has_avx512


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask", ["float", "bool"])
def test_every_variant_matches_the_reference(use_portable, dtype, mask):
    """Errors, the IPA loss and its gradient, per variant; fp32 tight, bf16 as the eager bf16."""
    pred, ref, target, m = make_inputs(ODD, dtype=dtype, mask=mask)
    t = torch.tensor([0.3, 0.8])
    m64 = m.double() if m.is_floating_point() else m
    p64 = pred.double().requires_grad_()
    want_loss = reference.flow_ipa_loss(p64, target.double(), t.double(), m64, ref_pred=ref.double())
    (want_grad,) = torch.autograd.grad(want_loss, p64)
    want_err = reference.halo_error(pred.double(), target.double(), m64)
    for isa in use_portable.isas():
        use_portable.set_isa(isa)
        assert use_portable.isa() == isa
        p = pred.clone().requires_grad_()
        loss, _ = flow_ipa_loss(p, target, t, m, ref_pred=ref, backend="cpp")
        (grad,) = torch.autograd.grad(loss, p)
        err = halo_error(pred, target, m, backend="cpp")
        assert grad.dtype == dtype, isa
        if dtype == torch.float32:
            torch.testing.assert_close(err.double(), want_err, rtol=1e-5, atol=0, msg=isa)
            torch.testing.assert_close(loss.double(), want_loss.detach(), rtol=1e-5, atol=0, msg=isa)
            torch.testing.assert_close(grad.double(), want_grad, rtol=1e-5, atol=1e-12, msg=isa)
        else:  # one bf16 rounding of each gradient element: half an ulp, 2^-9 relative
            torch.testing.assert_close(err.double(), want_err, rtol=1e-5, atol=0, msg=isa)
            assert ((grad.double() - want_grad).abs() <= want_grad.abs() * 2**-8 + 1e-30).all(), isa
        if mask == "float":  # a NaN in the mask reaches its sample's error, and only that one
            m_nan = m.clone()
            m_nan[0, 1, 2, 3] = float("nan")
            err_nan = halo_error(pred, target, m_nan, backend="cpp")
            assert err_nan[0].isnan() and err_nan[1:].isfinite().all(), isa


@pytest.mark.slow
@pytest.mark.parametrize("capability,isa", [("AVX2", "avx2"), ("DEFAULT", "baseline"), ("AVX512", "avx512")])
def test_portable_build_follows_torchs_cpu_capability(use_portable, monkeypatch, capability, isa):
    """ATEN_CPU_CAPABILITY (torch's choice of its own CPU kernels) picks ours too."""
    if isa not in use_portable.isas():
        pytest.skip(f"this CPU does not run the {isa} variant")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert _backends.follow_torch_isa(use_portable) == isa == use_portable.isa()
