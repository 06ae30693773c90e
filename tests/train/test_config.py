"""Run configs: shipped recipes load; bad values fail fast naming the key."""

from pathlib import Path

import pytest
import torch
import yaml

from ipa.data import ShardWriter, synthesize
from ipa.train.config import ConfigError, load_config, validate

CONFIGS = [p for p in sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
           if not p.name.startswith("eval-")]  # eval-*.yaml are `ipa eval` protocols


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(synthesize(tmp_path_factory.mktemp("cfg") / "ds", n=8))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path, data, tmp_path):
    overrides = [f"data.path={data}"]
    if "14b" in path.name:  # the checkpoint folder is not here: stand in a folder with a config.json
        (tmp_path / "transformer").mkdir()
        (tmp_path / "transformer" / "config.json").write_text("{}")
        overrides.append(f"model.source={tmp_path}")
    cfg = load_config(path, overrides)
    assert cfg.objective.beta > 0 and cfg.data.path == data
    if "14b" in path.name:  # the paper's setup
        assert (cfg.objective.beta, cfg.objective.hand_weight, cfg.run.steps, cfg.data.global_batch) == (600, 10, 1000, 8)
        assert yaml.safe_load(path.read_text())["model"]["source"].startswith("/") and cfg.model.family == "wan-vace"
        assert not cfg.lora.enabled if "full" in path.name else (cfg.lora.rank, cfg.lora.targets) == (128, ["to_q", "to_k", "to_v"])
        validate(cfg, world_size=8)
        assert cfg.data.grad_accum == 1


def test_overrides_and_output_dir(data, tmp_path):
    cfg = load_config(CONFIGS[0], [f"data.path={data}", "objective.beta=100", "lora.targets=[to_q]",
                                   "run.steps=7"], output_dir=tmp_path / "o")
    assert (cfg.objective.beta, cfg.lora.targets, cfg.run.steps) == (100, ["to_q"], 7)
    assert cfg.run.output_dir == str(tmp_path / "o")


@pytest.mark.parametrize("override,key", [
    ("deepspeed.zero_stage=5", "deepspeed.zero_stage"),
    ("objective.beta=0", "objective.beta"),
    ("objective.beta=-3", "objective.beta"),
    ("objective.name=ppo", "objective.name"),
    ("model.family=sdxl", "model.family"),
    ("data.micro_batch=0", "data.micro_batch"),
    ("run.steps=0", "run.steps"),
    ("objective.bta=1", "objective.bta"),
    ("nonsense.key=1", "nonsense"),
    ("reference.mode=precomputed", "reference.store"),
    ("lora.enabled=false", "reference.mode"),
    ("optimizer.lr=abc", "optimizer.lr"),
    ("run.steps=2.5", "run.steps"),
    ("lora.enabled=maybe", "lora.enabled"),
    ("model.source=/no/such/folder", "model.source"),
    ("reference.draws=-1", "reference.draws"),
    ("model.family=wan", "data.path"),  # the dataset was written for wan-vace
    ("optimizer.betas=[0.9,1.5]", "optimizer.betas"),  # torch's AdamW refused it only after the model build
    ("optimizer.betas=[a,b]", "optimizer.betas"),
    ("lora.alpha=-5", "lora.alpha"),
    ("objective.logit_std=0", "objective.logit_std"),
])
def test_bad_values_name_the_key(override, key, data):
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        load_config(CONFIGS[0], [f"data.path={data}", override])


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_half_weights_train_only_under_deepspeed_bf16(data, stage):
    """bf16 weights without DeepSpeed's bf16 optimizer would go to AdamW with no fp32 master copy
    (it used to pass at ZeRO-0..2); fp16 is refused outright."""
    base = [f"data.path={data}", f"deepspeed.zero_stage={stage}"]
    with pytest.raises(ConfigError, match=r"^deepspeed.bf16: must be true with model.dtype=bfloat16: .*master"):
        load_config(CONFIGS[0], [*base, "model.dtype=bfloat16"])
    for bf16 in ("true", "false"):
        with pytest.raises(ConfigError, match=r"^model.dtype: float16 cannot train here"):
            load_config(CONFIGS[0], [*base, "model.dtype=float16", f"deepspeed.bf16={bf16}"])
    assert load_config(CONFIGS[0], [*base, "model.dtype=bfloat16", "deepspeed.bf16=true"]).deepspeed.bf16
    assert load_config(CONFIGS[0], base).model.dtype == "float32"


def test_yaml_exponent_strings_are_numbers(data):
    # PyYAML reads 1e-4 (no dot) as a string; a float field takes it as the number.
    cfg = load_config(CONFIGS[0], [f"data.path={data}", "optimizer.lr=1e-4", "objective.beta=600"])
    assert cfg.optimizer.lr == 1e-4 and isinstance(cfg.objective.beta, float)


def test_missing_data_and_batch_not_divisible(data, tmp_path):
    with pytest.raises(ConfigError, match="^data.path: .* not a dataset folder"):
        load_config(CONFIGS[0], [f"data.path={tmp_path}"])
    cfg = load_config(CONFIGS[0], [f"data.path={data}", "data.global_batch=8", "data.micro_batch=1"])
    with pytest.raises(ConfigError, match="^data.global_batch: 8 is not divisible"):
        validate(cfg, world_size=3)
    with pytest.raises(ConfigError, match="^--config:"):
        load_config(tmp_path / "none.yaml")


def test_cli_refuses_more_ranks_than_gpus_before_launching(data, tmp_path, monkeypatch):
    import torch

    from ipa.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"^--nproc 2: this machine has 1 CUDA device\(s\)"):
        main(["train", "--config", str(CONFIGS[0]), "--nproc", "2", "--output-dir", str(tmp_path / "o"),
              f"data.path={data}"])


def test_cli_checks_the_batch_layout_for_nproc_before_launching(data, tmp_path):
    # 8 samples cannot fill a global batch of 2 x 5 ranks: refused in this process, nothing launched
    from ipa.cli import main

    argv = ["train", "--config", str(CONFIGS[0]), "--nproc", "5", "--output-dir", str(tmp_path / "o"),
            f"data.path={data}", "data.micro_batch=2"]
    with pytest.raises(ConfigError, match="^data.micro_batch: 8 samples cannot fill one global batch"):
        main(argv)
    with pytest.raises(ConfigError, match="^data.global_batch: 6 is not divisible"):
        main(argv[:4] + ["4"] + argv[5:-1] + ["data.global_batch=6", "data.micro_batch=1"])
    assert not (tmp_path / "o").exists()


def test_attention_backend_choices_are_the_models(data):
    from ipa.models.attention import BACKENDS
    from ipa.train.config import CHOICES

    assert CHOICES["model.attention_backend"] == BACKENDS
    with pytest.raises(ConfigError, match="^model.attention_backend: must be one of"):
        load_config(CONFIGS[0], [f"data.path={data}", "model.attention_backend=xformers"])


def test_deepspeed_json_sets_stage_and_bf16(data, tmp_path):
    from ipa.train.engines import compute_dtype, deepspeed_config

    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 3, "overlap_comm": true}, "bf16": {"enabled": true}}')
    cfg = load_config(CONFIGS[0], [f"data.path={data}", f"deepspeed.config_path={path}", "data.micro_batch=2"])
    assert (cfg.deepspeed.zero_stage, cfg.deepspeed.bf16) == (3, True)
    assert compute_dtype(cfg) == __import__("torch").bfloat16  # inputs follow the JSON's precision
    conf = deepspeed_config(cfg, world_size=2)
    assert conf["zero_optimization"]["overlap_comm"] and conf["train_batch_size"] == 4  # batch from data
    assert conf["gradient_clipping"] == cfg.optimizer.grad_clip == 1.0  # the optimizer section's clip stays on
    path.write_text('{"zero_optimization": {"stage": 2}, "gradient_clipping": 0.25}')
    cfg = load_config(CONFIGS[0], [f"data.path={data}", f"deepspeed.config_path={path}", "optimizer.grad_clip=0.5"])
    assert deepspeed_config(cfg, world_size=1)["gradient_clipping"] == 0.25  # the JSON's own wins
    cfg = load_config(CONFIGS[0], [f"data.path={data}", "optimizer.grad_clip=0"])
    assert "gradient_clipping" not in deepspeed_config(cfg, world_size=1)
    for text, msg in (("{nope", "is not valid JSON"), ('{"zero_optimization": {"stage": 4}}', "stage must be"),
                      ('{"fp16": {"enabled": true}}', "fp16 mixed precision is not supported")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=f"^deepspeed.config_path: .*{msg}"):
            load_config(CONFIGS[0], [f"data.path={data}", f"deepspeed.config_path={path}"])
    with pytest.raises(ConfigError, match="^deepspeed.config_path: .* does not exist"):
        load_config(CONFIGS[0], [f"data.path={data}", f"deepspeed.config_path={tmp_path / 'none.json'}"])


def test_offloaded_optimizer_is_deepspeeds_cpu_adam(data, monkeypatch):
    """The CPU Adam op itself is DeepSpeed's (and compiles for ~1.5 min on first use): a stand-in
    records what it is built with."""
    import deepspeed.ops.adam
    import torch

    from ipa.train.engines import deepspeed_config, make_optimizer

    class CPUAdam:
        def __init__(self, params, **kw):
            self.params, self.kw = list(params), kw

    monkeypatch.setattr(deepspeed.ops.adam, "DeepSpeedCPUAdam", CPUAdam)
    params = [torch.nn.Parameter(torch.zeros(3))]
    cfg = load_config(CONFIGS[0], [f"data.path={data}", "deepspeed.offload=true", "optimizer.lr=3e-5"])
    opt = make_optimizer(cfg, deepspeed_config(cfg, world_size=1), params)
    assert isinstance(opt, CPUAdam) and opt.params == params
    assert opt.kw == {"adamw_mode": True, "lr": 3e-5, "betas": tuple(cfg.optimizer.betas),
                      "weight_decay": cfg.optimizer.weight_decay}
    cfg = load_config(CONFIGS[0], [f"data.path={data}"])
    assert type(make_optimizer(cfg, deepspeed_config(cfg, world_size=1), params)) is torch.optim.AdamW


def test_dpo_needs_loser_latents(data, tmp_path):
    with pytest.raises(ConfigError, match=r"^data.path: objective.name=dpo needs an 'x0_loser' latent in every "
                                          r"sample; 8 lack it \(first: 'synth-0-00000'\)"):
        load_config(CONFIGS[0], [f"data.path={data}", "objective.name=dpo"])
    pairs = str(synthesize(tmp_path / "pairs", n=2, with_loser=True))
    assert load_config(CONFIGS[0], [f"data.path={pairs}", "objective.name=dpo"]).objective.name == "dpo"


def test_config_files_that_are_not_yaml_mappings_are_named(data, tmp_path, capsys):
    from ipa.cli import main

    cases = {"broken.yaml": ("run: [1\n", r"^--config: .*broken.yaml' is not valid YAML"),
             "list.yaml": ("- 1\n- 2\n", r"^config: expected a mapping of sections, got list")}
    for name, (text, match) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_config(tmp_path / name, output_dir=tmp_path / "o")
    with pytest.raises(ConfigError, match=r"^--config: .* is a folder, not a YAML file"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match=r"^run: expected a mapping \(a section\), got int"):
        load_config(CONFIGS[0], [f"data.path={data}", "run=3"], output_dir=tmp_path / "o")
    with pytest.raises(SystemExit):
        main(["train", "--config", str(CONFIGS[0]), "--nproc", "-2", f"data.path={data}"])
    assert "--nproc: expected an int >= 1" in capsys.readouterr().err


def test_micro_batches_over_samples_of_mixed_shapes_are_refused(tmp_path):
    # Two resolutions in one dataset: collate would fail at the first mixed micro batch, mid-run.
    with ShardWriter(tmp_path / "mixed", family="wan-vace") as writer:
        for i, width in enumerate((8, 8, 16, 16)):
            writer.add(f"s{i}", {"x0": torch.zeros(16, 3, 8, width)})
    overrides = [f"data.path={tmp_path / 'mixed'}", "data.global_batch=0", "data.grad_accum=1"]
    with pytest.raises(ConfigError, match=r"^data.micro_batch: 2 stacks samples, but .* holds samples of 2 different "
                                          r"shapes \('s0': .*\[16, 3, 8, 8\].*; 's2': .*\[16, 3, 8, 16\].*\); use "
                                          r"data.micro_batch=1"):
        load_config(CONFIGS[0], [*overrides, "data.micro_batch=2"], world_size=1)
    assert load_config(CONFIGS[0], [*overrides, "data.micro_batch=1"], world_size=1).data.micro_batch == 1


@pytest.mark.parametrize("module", ["ipa.train", "ipa.train.precompute_main"])
def test_launcher_entry_points_print_a_config_error_in_one_line(module, data):
    """What every rank of `torchrun -m ipa.train` prints (it printed a ConfigError traceback each)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", module, "--config", str(CONFIGS[0]), f"data.path={data}",
                           "objective.betta=1"], capture_output=True, text=True, timeout=120, check=False,
                          env={**__import__("os").environ, "RANK": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"python -m {module} (rank 1): error: objective.betta: unknown key (known: beta, hand_weight, logit_mean, "
        "logit_std, name, shift, skip_frames, timestep_sampling)"]
