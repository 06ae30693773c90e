"""The Triton kernels compiled for Ampere and Hopper GPUs (sm_80: A100; sm_90: H100/H200) on this
CPU-only machine.

The interpreter (TRITON_INTERPRET=1) checks what the kernels compute but accepts programs the GPU
compiler rejects; this runs the real pipeline (Triton IR -> PTX -> ptxas cubin) with the signatures
the launchers use, so a kernel that cannot build on a GPU fails here, not on a lent machine. The
build runs in a child process without TRITON_INTERPRET (this process's kernels are interpreted).
"""

import json
import os
import re
import subprocess
import sys

import pytest

ARCHS = (80, 90)
KERNEL_CASES = (
    [("fwd", dtype, mask, has_ref) for dtype, mask in [("bf16", "u8"), ("bf16", "bf16"), ("fp16", "fp32"),
                                                       ("fp32", "fp32"), ("fp64", "u8")] for has_ref in (True, False)]
    + [("bwd", dtype, mask, has_mask) for dtype, mask in [("bf16", "u8"), ("fp16", "fp16"), ("fp32", "fp32"),
                                                          ("fp64", "u8")] for has_mask in (True, False)]
    + [("fold", acc, n_type, f"{head}-{ref_parts}") for head in (0, 1, 2) for ref_parts in (True, False)
       for acc, n_type in [("fp32", "i32"), ("fp64", "i64")]]
)
CASES = [(arch,) + case for arch in ARCHS for case in KERNEL_CASES]


def build_all():
    """{case: {"ok": bool, "ptx_v4_load": bool, "ptx_v4_store": bool, "error": str}} for CASES."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ipa.kernels import halo

    ptr = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32", "fp64": "*fp64", "u8": "*u8"}
    acc_tl = {"bf16": tl.float32, "fp16": tl.float32, "fp32": tl.float32, "fp64": tl.float64}
    div16 = [["tt.divisibility", 16]]  # what a launch specializes for 16-aligned pointers and sizes

    def build(kernel, signature, constexprs, divisible=(), num_warps=4):
        sig = {name: signature.get(name, "constexpr") for name in kernel.arg_names}
        attrs = {(kernel.arg_names.index(name),): div16 for name in divisible}
        src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs)
        return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})

    def plane_sig(dtype, mask, names):
        sig = {n: ptr[dtype] for n in names}
        sig.update(mask_ptr=ptr[mask], C="i32", F="i32", HW="i32", skip="i32", mask_frames="i32", lam1="fp32")
        return sig

    # the launchers' configurations for a 720p latent plane (90 x 160), the size they were tuned at
    itemsize = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8}
    results, arch = {}, None
    for case in CASES:
        arch, kind, a, b, c = case
        try:
            if kind == "fwd":
                sig = plane_sig(a, b, ["pred_ptr", "ref_ptr", "target_ptr"])
                sig["part_pred_ptr"] = sig["part_ref_ptr"] = ptr["fp64" if a == "fp64" else "fp32"]
                sig["sync_ptr"] = "*i32"
                block, warps = halo._launch_config(14400, "fwd", itemsize[a])
                k = build(halo._halo_fwd_kernel, sig, {"HAS_REF": c, "HAS_MASK": True, "ACC": acc_tl[a],
                                                         "BLOCK": block},
                          divisible=("pred_ptr", "ref_ptr", "target_ptr", "HW"), num_warps=warps)
            elif kind == "bwd":
                sig = plane_sig(a, b, ["pred_ptr", "target_ptr", "grad_ptr"])
                acc_ptr = ptr["fp64" if a == "fp64" else "fp32"]
                sig.update(grad_err_ptr=acc_ptr, grad_scale_ptr=acc_ptr, N="i64" if a == "fp64" else "i32")
                block, warps = halo._launch_config(14400, "bwd", itemsize[a])
                k = build(halo._halo_bwd_kernel, sig, {"HAS_SCALE": c, "HAS_MASK": c, "ACC": acc_tl[a],
                                                       "BLOCK": block},
                          divisible=("pred_ptr", "target_ptr", "grad_ptr", "HW"), num_warps=warps)
            else:
                head, ref_parts = c.split("-")
                p = ptr[a]
                sig = dict(part_ptr=p, part_ref_ptr=p, ref_err_ptr=p, t_ptr="*fp32", err_ptr=p, err_ref_ptr=p,
                           loss_ptr=p, stats_ptr=p, coef_ptr=p, sync_ptr="*i32", B="i32", P="i32", N=b,
                           beta="fp32")
                k = build(halo._fold_kernel, sig, {"HEAD": int(head), "REF_PARTS": ref_parts == "True",
                                                   "ROUND_FP32": a == "fp32", "BLOCK_B": 8,
                                                   "BLOCK_P": halo.FOLD_TILE}, num_warps=halo.FOLD_WARPS)
            ptx = k.asm["ptx"]
            results[repr(case)] = {"ok": bool(k.asm["cubin"]), "error": "",
                                   "ptx_v4_load": bool(re.search(r"ld\.global(\.\w+)*\.v4\.b32", ptx)),
                                   "ptx_v4_store": bool(re.search(r"st\.global(\.\w+)*\.v4\.b32", ptx))}
        except Exception as e:  # reported per case by the test
            results[repr(case)] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
    return results


@pytest.fixture(scope="module")
def built():
    try:  # triton is installed on Linux x86-64 (setup.py) and its wheel ships the NVIDIA backend
        import triton.backends.nvidia.compiler  # noqa: F401  (with ptxas)
    except ImportError as e:
        from tests.conftest import skip_unless_ci  # here: this file also runs as the child's script

        skip_unless_ci(f"this triton has no NVIDIA backend to compile with: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES, ids=lambda c: "sm%d-" % c[0] + "-".join(map(str, c[1:])))
def test_kernel_builds_for_gpu(built, case):
    result = built[repr(case)]
    assert result["ok"], result["error"]
    kind, dtype = case[1], case[2]
    if dtype == "bf16":  # 16-byte accesses: 8 bf16 per thread per instruction, what HBM bandwidth needs
        assert result["ptx_v4_load"], "bf16 loads are not 16 bytes wide"
        if kind == "bwd":
            assert result["ptx_v4_store"], "bf16 gradient stores are not 16 bytes wide"


if __name__ == "__main__":
    print(json.dumps(build_all()))
