"""`ipa train` end to end: 2 CPU ranks on gloo, DeepSpeed ZeRO-2 and ZeRO-3, tiny Wan-VACE.

Each run is a real launch (`ipa train --nproc 2`, torchrun underneath); runs are shared between
tests through module-scoped fixtures to keep the suite short.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from ipa.data import synthesize
from ipa.models import ReferenceStore

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

TINY = "configs/tiny-cpu.yaml"


def ipa(*args, env=None, check=True):
    """Run `ipa ...` in its own process session (a simulated crash kills only that session)."""
    proc = subprocess.run([sys.executable, "-m", "ipa.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, start_new_session=True, timeout=240,
                          check=False)
    if check and proc.returncode:
        raise AssertionError(f"ipa {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def train(out, data, *overrides, env=None, check=True):
    return ipa("train", "--config", TINY, "--nproc", "2", "--output-dir", str(out), f"data.path={data}",
               *overrides, env=env, check=check)


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def ranks(out):
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("train") / "data", n=8, seed=1)


@pytest.fixture(scope="module")
def zero2_adapter(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("zero2")
    train(out, data, "run.steps=6", "run.save_every=3", "run.verify_weights=true")
    return out


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A local diffusers folder of the tiny model (weights from seed 7, not the config's seed 0)."""
    from ipa.models import build_transformer

    folder = tmp_path_factory.mktemp("pretrained") / "transformer"
    build_transformer("wan-vace", "tiny", dtype=torch.float32, attention_backend="native", seed=7).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def zero3_copy(data, pretrained, tmp_path_factory):
    """Policy and copy reference both loaded from a folder under zero.Init (streamed into shards)."""
    out = tmp_path_factory.mktemp("zero3")
    train(out, data, "run.steps=3", "deepspeed.zero_stage=3", "reference.mode=copy", "run.verify_weights=true",
          f"model.source={pretrained}")
    return out


def check_ipa_run(out):
    ls = losses(out)
    assert abs(ls[0] - math.log(2)) < 1e-4, "step 0: policy == reference, so the loss is log 2"
    assert all(math.isfinite(v) for v in ls) and ls[-1] < ls[0]
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lrs[:3] == pytest.approx([5e-4, 1e-3, 1e-3])  # the rate each step ran at: lr 1e-3, 2 warmup steps
    for r in ranks(out):
        assert r["reference_digest_start"] == r["reference_digest_end"], "the reference must not move"
        assert r["policy_trainable_digest_start"] != r["policy_trainable_digest_end"], "the policy must train"


def test_zero3_copy_reference(zero3_copy, pretrained):
    from diffusers import WanVACETransformer3DModel

    from ipa.train.engines import weights_digest

    check_ipa_run(zero3_copy)
    loaded = weights_digest(WanVACETransformer3DModel.from_pretrained(pretrained))
    for r in ranks(zero3_copy):  # each rank holds about half of each model
        for model in ("policy", "reference"):
            n = r[f"{model}_numel_start"]
            assert abs(n["local"] - n["full"] / 2) <= 0.02 * n["full"], (model, n)
        assert r["reference_digest_start"] == loaded, "the sharded reference holds the folder's weights"


def test_zero2_adapter_reference_outputs(zero2_adapter):
    check_ipa_run(zero2_adapter)
    rows = [json.loads(line) for line in (zero2_adapter / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert {"loss", "ipa_gap", "model_error", "reference_error", "implicit_accuracy", "lr", "grad_norm",
            "samples_per_s", "peak_memory_mb"} <= set(rows[0])
    assert (zero2_adapter / "loss.png").stat().st_size > 0
    assert any((zero2_adapter / "tensorboard").iterdir())
    assert (zero2_adapter / "checkpoints" / "latest").read_text().strip() == "step00000006"
    state = torch.load(zero2_adapter / "checkpoints" / "step00000006" / "rank1_state.pt", weights_only=False)
    assert state["data"] == {"world_size": 2, "micro_batch": 2, "grad_accum": 1, "consumed": 12}
    assert all("peak_memory_mb" in r for r in ranks(zero2_adapter))
    # A LoRA checkpoint holds the adapters, not the frozen base (rebuilt from model.source on resume).
    module = torch.load(zero2_adapter / "checkpoints" / "step00000006" / "mp_rank_00_model_states.pt",
                        weights_only=False)["module"]
    assert module and all("lora_" in name for name in module), sorted(module)[:5]


def test_resume_after_sigkill_matches_straight_run(zero2_adapter, data, tmp_path):
    """6 steps straight == 3 steps, checkpoint, SIGKILL during step 5, resume, finish."""
    out = tmp_path / "killed"
    proc = train(out, data, "run.steps=6", "run.save_every=3", env={"IPA_TRAIN_KILL_AT_STEP": "4"}, check=False)
    assert proc.returncode != 0 and (out / "checkpoints" / "latest").read_text().strip() == "step00000003"
    refused = train(out, data, "run.steps=6", "run.save_every=3", check=False)  # no silent overwrite
    assert refused.returncode != 0 and "pass --resume" in refused.stderr
    config = (out / "config.yaml").read_text()
    refused = train(out, data, "run.steps=6", "run.save_every=3", "data.micro_batch=1", "--resume", check=False)
    assert refused.returncode != 0 and "data.micro_batch: the checkpoint step00000003 was written with 2" in refused.stderr
    assert (out / "config.yaml").read_text() == config  # a refused resume leaves the run's config alone
    # checkpoints every 2 steps from here: the config steps 1-3 ran with is kept, the change named
    resumed = ipa("train", "--config", TINY, "--nproc", "2", "--output-dir", str(out), f"data.path={data}",
                  "run.steps=6", "run.save_every=2", "--resume")
    assert "(run.save_every: 3 -> 2); that one is kept as config.until-step00000003.yaml" in resumed.stderr
    assert (out / "config.until-step00000003.yaml").read_text() == config
    assert losses(out) == losses(zero2_adapter)  # bit for bit


def test_kill_in_the_middle_of_a_save_resumes_from_the_previous_checkpoint(zero2_adapter, data, tmp_path):
    """SIGKILL after step 6's DeepSpeed files, before its rank states and pointer: resume from step 3."""
    out = tmp_path / "killed-in-save"
    args = ("run.steps=6", "run.save_every=3")
    # --resume from the start, as a relaunch script that always passes it: a fresh run, with a note
    proc = train(out, data, *args, "--resume", env={"IPA_TRAIN_KILL_IN_SAVE": "6"}, check=False)
    assert proc.returncode != 0 and (out / "checkpoints" / "step00000006").is_dir()
    assert f"resume: no checkpoint in {str(out)!r} yet: starting at step 0" in proc.stderr
    assert (out / "checkpoints" / "latest").read_text().strip() == "step00000003"
    assert "no checkpoint" not in train(out, data, *args, "--resume").stderr
    assert losses(out) == losses(zero2_adapter)


# One process of `ipa precompute-reference` that dies (no cleanup, as under SIGKILL) in its 15th
# forward: with 2 draws and --save-every 7, after the partial store of samples 1-7 was written.
KILLED_PRECOMPUTE = """
import os, sys
import ipa.models
from ipa.train.cli import module_main

error, calls = ipa.models.prediction_error, []  # one forward per call
def dying_error(*args, **kwargs):
    calls.append(1)
    if len(calls) == 15:
        os._exit(9)
    return error(*args, **kwargs)
ipa.models.prediction_error = dying_error
sys.exit(module_main("precompute", sys.argv[1:]))
"""


def test_precomputed_reference_matches_online_copy(data, tmp_path):
    store = tmp_path / "ref.safetensors"
    partial = tmp_path / "ref.safetensors.partial"
    precomputed = ("reference.mode=precomputed", f"reference.store={store}", "reference.draws=2")
    # The training run's own settings: --draws and --out default to reference.draws / reference.store.
    args = ("--config", TINY, "--output-dir", str(tmp_path / "pre"), f"data.path={data}", *precomputed)
    killed = subprocess.run([sys.executable, "-c", KILLED_PRECOMPUTE, *args, "--save-every", "7"],
                            capture_output=True, text=True, timeout=240, start_new_session=True, check=False)
    assert killed.returncode == 9, killed.stderr[-3000:]
    assert not store.exists() and len(ReferenceStore.load(partial)) == 7
    # A rerun with other draw settings is refused before any rank starts, keeping the file (under
    # an outside launcher every rank refuses: test_store's broadcast test).
    other = ipa("precompute-reference", "--nproc", "2", *args, "run.seed=5", check=False)
    assert other.returncode == 2 and "run.seed: 0 there, 5 here" in other.stderr and partial.is_file()
    # Two ranks finish what one began, under ZeRO-3: the one sample left, while the rank with none
    # joins the collective forwards on a sample it drops.
    done = ipa("precompute-reference", "--nproc", "2", *args, "deepspeed.zero_stage=3")
    assert "7 of 8 samples done" in done.stdout and not partial.exists()
    assert len(ReferenceStore.load(store)) == 8
    common = ("run.steps=3", "reference.draws=2", "run.export=false")
    train(tmp_path / "pre_run", data, *precomputed, *common)
    train(tmp_path / "copy_run", data, "reference.mode=copy", *common)
    def metric(out, key):
        return [json.loads(line)[key] for line in (out / "metrics.jsonl").read_text().splitlines()]

    # The same draws give the same reference errors, up to float rounding: the precompute pass
    # runs samples one at a time, training in micro batches of 2, and a transformer's output
    # depends on its batch mates at the last bit. beta/2 = 300 amplifies that in the loss.
    pre, online = tmp_path / "pre_run", tmp_path / "copy_run"
    assert metric(pre, "reference_error") == pytest.approx(metric(online, "reference_error"), rel=1e-5)
    assert losses(pre) == pytest.approx(losses(online), abs=1e-4)
    # Step 1 sees the same policy, noise and t: bit for bit. Its gradient then carries the
    # reference error's rounding (through the IPA coefficient), so later policies differ at the
    # last bits (seen on a Xeon: 3.7811298 vs 3.7811296 at step 3).
    pre_err, online_err = metric(pre, "model_error"), metric(online, "model_error")
    assert len(pre_err) == len(online_err) == 3 and pre_err[0] == online_err[0]
    assert pre_err[1:] == pytest.approx(online_err[1:], rel=1e-5)

    # The store no longer fits data whose sample changed since the pass: `--nproc` refuses before
    # any rank starts, a single process (what outside launchers start) before its model build.
    changed = with_new_hand_mask(data, tmp_path / "changed", index=3)
    for launch, run in (("nproc", train), ("single", train_single)):
        refused = run(tmp_path / f"stale_{launch}", changed, *precomputed, *common, check=False)
        assert refused.returncode == 2 and "computed on other data for 1 sample(s)" in refused.stderr, launch
        assert "ChildFailedError" not in refused.stderr  # --nproc: torchrun never started
        assert "synth-1-00003" in refused.stderr and not (tmp_path / f"stale_{launch}" / "metrics.jsonl").exists()


def train_single(out, data, *overrides, check=True):
    return ipa("train", "--config", TINY, "--output-dir", str(out), f"data.path={data}", *overrides, check=check)


def with_new_hand_mask(src, dst, *, index):
    """A copy of dataset `src` (same sample ids) whose sample `index` has other hand masks."""
    from ipa.data import ShardDataset, ShardWriter

    dataset = ShardDataset(src)
    info = {k: v for k, v in dataset.info.items() if k not in ("format", "version", "samples")}
    with ShardWriter(dst, **info) as writer:
        for i in range(len(dataset)):
            sample = dataset[i]
            sample_id = sample.pop("sample_id")
            if i == index:
                sample["hand_mask"] = 1 - sample["hand_mask"]
            writer.add(sample_id, sample)
    return dst


def test_exported_lora_loads_into_a_fresh_transformer_and_changes_it(zero2_adapter):
    from ipa.models import build_transformer, load_lora, synthetic_batch
    from ipa.models.reference import forward

    lora = zero2_adapter / "lora"
    assert (lora / "pytorch_lora_weights.safetensors").is_file()
    model = build_transformer("wan-vace", "tiny", dtype=torch.float32, attention_backend="native", seed=0)
    batch = synthetic_batch("wan-vace", model.config, 1, 3, 8, 8, seed=5)
    s = torch.tensor([0.5])
    with torch.no_grad():
        before = forward(model, "wan-vace", batch, batch["x0"], s)
        load_lora(model, lora)
        after = forward(model, "wan-vace", batch, batch["x0"], s)
    assert (after - before).abs().max() > 1e-4


def test_bad_config_fails_before_any_process_starts(data, tmp_path):
    proc = ipa("train", "--config", TINY, "--nproc", "2", f"data.path={data}", "deepspeed.zero_stage=7",
               "--output-dir", str(tmp_path / "x"), check=False)
    assert proc.returncode != 0 and "deepspeed.zero_stage: must be 0, 1, 2 or 3" in proc.stderr
    assert "torchrun" not in proc.stderr and not (tmp_path / "x").exists()


def test_dpo_objective_and_full_finetune_export(data, tmp_path):
    # DPO: each sample also carries a loser latent (same conditions, same noise and timestep); the
    # reference's errors on winners and losers precomputed by two ranks.
    pairs = tmp_path / "pairs"
    ipa("data", "synth", "--n", "8", "--with-loser", "--out", str(pairs))
    dpo = ("objective.name=dpo", "objective.beta=50", "reference.mode=precomputed",
           f"reference.store={tmp_path / 'pairs_ref.safetensors'}", "reference.draws=1")
    done = ipa("precompute-reference", "--config", TINY, "--nproc", "2", "--output-dir", str(tmp_path / "pre"),
               f"data.path={pairs}", *dpo)
    assert "8 samples x 1 draws of reference errors (winner and loser)" in done.stdout
    train(tmp_path / "dpo", pairs, *dpo, "run.steps=2", "run.export=false")
    rows = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    # step 1: policy == reference, up to the rounding of errors computed one sample at a time
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-4 and abs(rows[0]["reward_margin"]) < 1e-5
    assert rows[0]["reference_error_w"] == pytest.approx(rows[0]["model_error_w"], rel=1e-5)
    assert rows[0]["reference_error_l"] == pytest.approx(rows[0]["model_error_l"], rel=1e-5)
    assert rows[0]["model_error_l"] != pytest.approx(rows[0]["model_error_w"], rel=1e-3)

    # Full fine-tuning under ZeRO-3 exports a diffusers model folder with changed weights.
    from diffusers import WanVACETransformer3DModel

    from ipa.models import build_transformer

    from ipa.train.engines import weights_digest

    train(tmp_path / "full", data, "lora.enabled=false", "reference.mode=copy", "deepspeed.zero_stage=3",
          "run.steps=2", "run.verify_weights=true")
    tuned = WanVACETransformer3DModel.from_pretrained(tmp_path / "full" / "model")
    # gathered shard by shard, the export is exactly the trained policy
    assert weights_digest(tuned) == ranks(tmp_path / "full")[0]["policy_trainable_digest_end"]
    base = build_transformer("wan-vace", "tiny", dtype=torch.float32, attention_backend="native", seed=0)
    changed = [n for (n, a), b in zip(tuned.named_parameters(), base.parameters()) if not torch.equal(a, b)]
    assert changed and len(changed) > len(list(base.parameters())) // 2
