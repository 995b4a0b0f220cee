"""Every field of every stage config is present in every preset and settable through the real
absl flag parser; unknown keys are one-line errors; config differences are named."""

import ast
import dataclasses
import importlib.util
import json
import pathlib
import subprocess
import sys
import typing

import pytest
from absl import flags
from ml_collections import config_flags

from r1jax import config_utils, sharding
from r1jax.models import config as model_config_lib
from r1jax.models import presets
from r1jax.r1 import config as r1_config
from r1jax.rewards import registry
from r1jax.rl import config as rl_config
from r1jax.train import pretrain, reward, sft
from r1jax.train import state as state_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _declared_presets(name: str) -> tuple[str, ...]:
    """The keys of configs/<name>.py's PRESETS dict, so a new preset is tested without a
    second list to keep in step."""
    spec = importlib.util.spec_from_file_location(f"_configs_{name}", ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(module.PRESETS)


PRESETS = {
    "r1_zero": _declared_presets("r1_zero"),
    "r1": _declared_presets("r1"),
    "pretrain_base": ("tiny", "smoke"),  # no PRESETS dict: get_config branches on the name
    "model": tuple(sorted(presets.PRESETS)),
}
_PRETRAIN_OWN = ("model", "sft", "optim")  # PretrainConfig fields given as sections


def parse(name: str, preset: str, *overrides: str):
    """configs/<name>.py:<preset> after the real absl parser applied `overrides`."""
    return config_utils.parse_config_file(f"{ROOT / 'configs' / name}.py:{preset}", *overrides)


# ---------------------------------------------------------------------------------------------
# The field paths every preset must declare, with their scalar types
# ---------------------------------------------------------------------------------------------


def _dataclass_paths(cls, prefix: str, skip=()) -> dict[str, type | None]:
    """{dotted path: scalar type or None (present, not a scalar)} of every field of `cls`."""
    hints = typing.get_type_hints(cls)
    paths: dict[str, type | None] = {}
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        path, hint = f"{prefix}{field.name}", hints[field.name]
        if dataclasses.is_dataclass(hint) and hint is not registry.Spec:
            paths.update(_dataclass_paths(hint, f"{path}."))
        else:
            paths[path] = config_utils.scalar_type(hint)
    return paths


def _model_paths(prefix: str) -> dict[str, type | None]:
    return _dataclass_paths(model_config_lib.ModelConfig, prefix)


def _mesh_paths(prefix: str) -> dict[str, type | None]:
    return {f"{prefix}{axis}": int for axis in sharding.MESH_AXES}


def _grpo_paths(prefix: str) -> dict[str, type | None]:
    paths = _dataclass_paths(rl_config.ExperimentConfig, prefix)
    paths.update(_model_paths(f"{prefix}model_overrides."))
    paths.update(_mesh_paths(f"{prefix}mesh."))
    paths.update({f"{prefix}rewards.{name}": float for name in registry.names()})
    paths.update({f"{prefix}reward_options.{name}.{option}": kind
                  for name in registry.names()
                  for option, kind in rl_config.reward_option_types(name).items()})
    paths[f"{prefix}reward_routes"] = None
    return paths


def _sft_paths(prefix: str) -> dict[str, type | None]:
    paths = _dataclass_paths(sft.SFTConfig, f"{prefix}sft.")
    paths.update(_mesh_paths(f"{prefix}sft.mesh."))
    paths.update(_dataclass_paths(state_lib.OptimConfig, f"{prefix}optim."))
    return paths


def _pretrain_paths(prefix: str) -> dict[str, type | None]:
    paths = _dataclass_paths(pretrain.PretrainConfig, prefix, skip=_PRETRAIN_OWN)
    paths.update(_sft_paths(prefix))
    paths.update(_model_paths(f"{prefix}model."))
    paths[f"{prefix}model_preset"] = str
    return paths


def _r1_paths() -> dict[str, type | None]:
    # Every field of r1_config.R1Config but the sections given whole (GRPO dicts, pretraining,
    # distillation: their own fields are added below).
    own = ("reasoning_rl", "all_scenario", "r1_zero", "pretrain", "distill", "cold_start",
           "sft", "reward_model")
    paths = _dataclass_paths(r1_config.R1Config, "", skip=own)
    for section in ("reasoning_rl", "all_scenario", "r1_zero", "distill.rl"):
        paths.update(_grpo_paths(f"{section}."))
    for section in ("cold_start.", "sft.", "distill.sft."):
        paths.update(_sft_paths(section))
    paths["cold_start.num_examples"] = int
    paths.update(_dataclass_paths(r1_config.DistillConfig, "distill.",
                                  skip=("pretrain", "rl", "sft")))
    paths.update(_pretrain_paths("pretrain."))
    paths.update(_pretrain_paths("distill.pretrain."))
    paths.update(_dataclass_paths(r1_config.RewardModelConfig, "reward_model.",
                                  skip=("model", "train")))
    paths.update(_dataclass_paths(reward.RMConfig, "reward_model.train."))
    paths.update(_mesh_paths("reward_model.train.mesh."))
    paths.update(_model_paths("reward_model.model."))
    return paths


def expected_paths(name: str) -> dict[str, type | None]:
    return {"r1_zero": lambda: _grpo_paths(""), "r1": _r1_paths,
            "pretrain_base": lambda: _pretrain_paths(""),
            "model": lambda: _model_paths("")}[name]()


def _get(config, path: str):
    for key in path.split("."):
        config = config[key]
    return config


def _new_value(kind: type, current):
    """A value of type `kind` that differs from `current`."""
    if kind is bool:
        return not current
    if kind is int:
        return (current or 0) + 7
    if kind is float:
        return (current or 0.0) + 0.25
    return f"{current}_x"


CASES = [(name, preset) for name, names in PRESETS.items() for preset in names]


@pytest.mark.parametrize("name,preset", CASES)
def test_every_field_is_present_and_overridable(name, preset):
    """Each dataclass field of each stage is a key of the preset, and every scalar one (None
    defaults included) takes a new value from the command line through absl."""
    paths = expected_paths(name)
    config = parse(name, preset)
    missing = []
    for path in paths:
        try:
            _get(config, path)
        except (KeyError, AttributeError):
            missing.append(path)
    assert not missing, f"configs/{name}.py:{preset} lacks {missing}"
    scalars = {p: k for p, k in paths.items() if k is not None}
    wanted = {p: _new_value(k, _get(config, p)) for p, k in scalars.items()}
    parsed = parse(name, preset, *(f"{p}={v}" for p, v in wanted.items()))
    wrong = {p: (_get(parsed, p), v) for p, v in wanted.items() if _get(parsed, p) != v}
    assert not wrong, wrong
    assert len(wanted) > 40  # the walk found the fields


def test_r1_zero_user_overrides_reach_the_experiment_config(tmp_path):
    """The issue's own examples, from the command line to the frozen ExperimentConfig."""
    config = parse("r1_zero", "qwen2_5_3b_countdown",
                   f"base_dir={tmp_path}", f"data.train_jsonl={tmp_path}/train.jsonl",
                   f"data.test_jsonl={tmp_path}/test.jsonl", "data.jsonl_format=gsm8k",
                   "data.jsonl_on_error=skip", "data.overlong=truncate", "rewards.numeric=1.0",
                   "rewards.countdown=0.0", "rewards.overlong=1.0",
                   "reward_options.overlong.max_length=1024",
                   "reward_options.overlong.cache_length=256", "reward_options.math.timeout_s=2.5",
                   "model_overrides.moe_dispatch=expert_parallel",
                   "model_overrides.q_lora_rank=32", "sampling.top_p=0.9", "sampling.top_k=40",
                   "grpo.bias_update_speed=0.01", "mesh.expert=2", "eval.max_new_tokens=64")
    cfg = rl_config.from_config_dict(config)
    assert (cfg.data.train_jsonl, cfg.data.test_jsonl) == (f"{tmp_path}/train.jsonl",
                                                          f"{tmp_path}/test.jsonl")
    assert (cfg.data.jsonl_format, cfg.data.jsonl_on_error, cfg.data.overlong) == (
        "gsm8k", "skip", "truncate")
    # A weight of 0 leaves the preset's countdown reward out; options left unset are dropped.
    assert dict(cfg.rewards.weights) == {"format_strict": 0.1, "numeric": 1.0, "overlong": 1.0}
    assert dict(cfg.rewards.options) == {"math": (("timeout_s", 2.5),),
                                         "overlong": (("cache_length", 256), ("max_length", 1024))}
    assert cfg.rewards.reward("overlong").options == (("cache_length", 256),
                                                      ("max_length", 1024))
    # The preset's own overrides (its precision policy) stay beside the command line's.
    assert dict(cfg.model_overrides) == {"moe_dispatch": "expert_parallel", "q_lora_rank": 32,
                                         **model_config_lib.precision("accelerator")}
    assert (cfg.sampling.top_p, cfg.sampling.top_k) == (0.9, 40)
    assert cfg.grpo.bias_update_speed == 0.01
    assert dict(cfg.mesh) == {"fsdp": -1, "expert": 2}
    assert cfg.eval.max_new_tokens == 64


def test_declared_but_unset_entries_change_nothing():
    """The declared-everything presets freeze to the values they set: no model override, only
    the named rewards, the mesh as given."""
    cfg = rl_config.from_config_dict(parse("r1_zero", "tiny"))
    assert cfg.model_overrides == ()
    assert dict(cfg.rewards.weights) == {"numeric": 1.0, "format_strict": 0.5,
                                         "format_lenient": 0.5}
    assert cfg.mesh == (("fsdp", -1),)
    smoke = rl_config.from_config_dict(parse("r1_zero", "smoke"))
    assert dict(smoke.mesh) == {"data": 1, "fsdp": 1, "expert": 1, "tensor": 1}
    base = pretrain.PretrainConfig.from_config_dict(parse("pretrain_base", "tiny"))
    expected = model_config_lib.ModelConfig.from_dict(presets.get("tiny")).replace(
        num_hidden_layers=3, tie_word_embeddings=True)
    assert base.model == expected
    assert base.sft.mesh == (("fsdp", -1),)


def test_reward_options_are_the_scorers_keyword_arguments():
    """The declared options follow the scorers' signatures (a new option appears by itself)."""
    assert rl_config.reward_option_types("overlong") == {"max_length": int, "cache_length": int}
    assert rl_config.reward_option_types("math") == {"timeout_s": float, "answer_in_think": bool}
    assert rl_config.reward_option_types("format_strict") == {}


def test_mesh_pairs():
    assert config_utils.mesh_pairs({"data": 1, "fsdp": -1, "expert": 1}) == (("fsdp", -1),)
    assert config_utils.mesh_pairs({"data": 1, "fsdp": 1}) == (("data", 1), ("fsdp", 1))
    assert config_utils.mesh_pairs({"data": 2, "fsdp": -1, "tensor": None}) == (
        ("data", 2), ("fsdp", -1))


def test_assign_replaces_the_set_and_keeps_the_keys():
    c = rl_config.config_dict(base_dir="b", total_steps=1)
    config_utils.assign(c.rewards, {"math": 2.0})
    assert set(c.rewards.keys()) >= set(registry.names())
    assert config_utils.set_entries(c.rewards) == {"math": 2.0}
    with pytest.raises(ValueError, match="unknown config key 'mathh': did you mean math"):
        config_utils.assign(c.rewards, {"mathh": 1.0})
    config_utils.assign(c.rewards, {"learned": 1.0}, declare=True)
    assert config_utils.set_entries(c.rewards) == {"learned": 1.0}


# ---------------------------------------------------------------------------------------------
# Unknown keys
# ---------------------------------------------------------------------------------------------


def _override_error(*overrides: str) -> str | None:
    source = f"{ROOT / 'configs' / 'r1_zero'}.py:tiny"
    argv = ["prog", f"--config={source}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", source, flag_values=values, sys_argv=argv)
    with pytest.raises((KeyError, AttributeError)):
        values(argv)
    return config_utils.check_overrides(argv, values)


def test_misspelled_key_names_the_closest_keys():
    message = _override_error("--config.data.trian_jsonl=x.jsonl")
    assert message == ("unknown config key '--config.data.trian_jsonl': did you mean "
                       "train_jsonl, test_jsonl?")
    message = _override_error("--config.sampling.top_p=0.9", "--config.grpoo.beta=0.1")
    assert message.startswith("unknown config key '--config.grpoo': did you mean grpo")
    assert "\n" not in message


def test_section_converter_names_the_closest_field():
    values = rl_config.config_dict(base_dir="b", total_steps=1).to_dict()
    values["grpo"]["betta"] = 0.1
    with pytest.raises(ValueError, match=r"grpo: unknown field 'betta'; did you mean beta\?"):
        rl_config.from_config_dict(values)


@pytest.mark.parametrize("config_arg", [None, "--config=configs/r1_zero.py:smoke"])
def test_entry_point_prints_one_line_for_an_unknown_key(config_arg):
    """The real entry point: exit status 2, one line on stderr, no traceback, in seconds; for
    the default config (applied when the flag is defined) and for an explicit --config."""
    result = subprocess.run(
        [sys.executable, "experiments/r1_zero.py", *([config_arg] if config_arg else []),
         "--config.data.trian_jsonl=x.jsonl", "--workdir=/nonexistent/never-created"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: unknown config key '--config.data.trian_jsonl': did you mean "
                     "train_jsonl, test_jsonl?"], result.stderr


# ---------------------------------------------------------------------------------------------
# Differences
# ---------------------------------------------------------------------------------------------


def test_differences_name_changed_added_and_removed_keys():
    old = {"grpo": {"beta": 0.001, "group_size": 8}, "seed": 0, "gone": 1}
    new = {"grpo": {"beta": 0.01, "group_size": 8}, "seed": 0, "added": {"x": 2}}
    assert config_utils.differences(old, new) == [
        "added.x: '<absent>' -> 2", "gone: 1 -> '<absent>'", "grpo.beta: 0.001 -> 0.01"]
    assert config_utils.differences(old, old) == []


def test_report_changes_prints_each_changed_key(tmp_path, capsys):
    path = tmp_path / "config.json"
    assert config_utils.report_changes(path, {"seed": 0}) == []  # a new run: nothing to say
    path.write_text('{"grpo": {"beta": 0.001}, "seed": 0}')
    assert config_utils.report_changes(path, {"grpo": {"beta": 0.001}, "seed": 0}) == []
    assert capsys.readouterr().out == ""
    changes = config_utils.report_changes(path, {"grpo": {"beta": 0.01}, "seed": 0}, "GRPO run")
    assert changes == ["grpo.beta: 0.001 -> 0.01"]
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"note: resuming the GRPO run in {tmp_path} with a config that")
    assert out[1:] == ["  grpo.beta: 0.001 -> 0.01"]


# ---------------------------------------------------------------------------------------------
# The trainer reads the settable data fields: a small test set, overlong prompts
# ---------------------------------------------------------------------------------------------


def _gsm8k(path: pathlib.Path, questions: list[str]) -> str:
    import json

    path.write_text("".join(json.dumps({"question": q, "answer": f"so #### {i}"}) + "\n"
                            for i, q in enumerate(questions)))
    return str(path)


def _run_config(base_dir, tmp_path, *overrides: str):
    test = _gsm8k(tmp_path / "test.jsonl", [f"What is {i} plus {i}?" for i in range(3)])
    train = _gsm8k(tmp_path / "train.jsonl", [f"What is {i} minus 1?" for i in range(5)])
    return rl_config.from_config_dict(parse(
        "r1_zero", "smoke", f"base_dir={base_dir}", f"data.train_jsonl={train}",
        f"data.test_jsonl={test}", "data.jsonl_format=gsm8k", "eval.num_prompts=8",
        *overrides))


def test_small_test_set_is_clamped_with_a_note_never_repeated(base_dir, tmp_path, capsys):
    from r1jax.data import templates
    from r1jax.rl import trainer
    from r1jax.train import base

    config = _run_config(base_dir, tmp_path)
    tok = base.load_tokenizer(base_dir)
    _, eval_batch = trainer._loaders(config, tok, templates.get("r1_zero"))
    assert eval_batch["prompt_tokens"].shape[0] == 3  # each of the 3 test prompts once
    assert len({tuple(row) for row in eval_batch["prompt_tokens"].tolist()}) == 3
    assert "note: eval.num_prompts=8 but the test set has 3 prompts: evaluating 3" in \
        capsys.readouterr().out


def test_data_overlong_reaches_the_prompt_loader(base_dir, tmp_path):
    from r1jax.data import templates
    from r1jax.rl import trainer
    from r1jax.train import base

    tok = base.load_tokenizer(base_dir)
    template = templates.get("r1_zero")
    config = _run_config(base_dir, tmp_path, "data.max_prompt_len=16", "data.bucket=8")
    with pytest.raises(ValueError, match="max_prompt_len=16"):
        trainer._loaders(config, tok, template)
    config = _run_config(base_dir, tmp_path, "data.max_prompt_len=16", "data.bucket=8",
                         "data.overlong=truncate")
    loader, eval_batch = trainer._loaders(config, tok, template)
    assert eval_batch["prompt_tokens"].shape[1] == 16
    assert next(iter(loader))["prompt_tokens"].shape[1] == 16


@pytest.mark.slow
def test_training_says_what_it_is_doing_and_what_changed_on_resume(base_dir, tmp_path, capsys):
    """One-line notes for the silent phases (loading, step-0 evaluation, the first compile),
    and a resumed run whose config changed names the change."""
    from r1jax.rl import trainer

    def config(steps: int):
        return parse("r1_zero", "smoke", f"base_dir={base_dir}", f"total_steps={steps}",
                     "checkpoint_every=1", "eval.every=0", "eval.greedy=false", "plots=false",
                     "tensorboard=false", "reward_workers=1", "async_checkpoints=false")

    workdir = str(tmp_path / "run")
    trainer.train(config(1), workdir)
    out = capsys.readouterr().out
    assert f"loading the base model from {base_dir}" in out
    assert "step 0: evaluating 2 held-out prompts" in out
    assert "step 1: sampling, scoring and compiling the GRPO step" in out
    assert "resuming" not in out
    # What train() does first when it resumes: compare with the config the run recorded.
    trainer._write_config(rl_config.from_config_dict(config(2)), workdir)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"note: resuming the GRPO run in {workdir} with a config")
    assert out[1:] == ["  optim.total_steps: 2 -> 4", "  total_steps: 1 -> 2"]


# ---------------------------------------------------------------------------------------------
# One freeze for every stage; every default written once
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Inner:
    rate: float = 0.5
    sizes: tuple[int, ...] = (1,)


@dataclasses.dataclass(frozen=True)
class _Outer:
    name: str
    inner: _Inner = _Inner()
    maybe: _Inner | None = None
    knobs: tuple[tuple[str, typing.Any], ...] = ()
    sorted_knobs: tuple[tuple[str, typing.Any], ...] = config_utils.converted(
        (), config_utils.sorted_pairs)
    mesh: tuple[tuple[str, int], ...] = config_utils.mesh_field(sharding.MESH_AXES)
    table: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


def test_freeze_follows_the_type_hints():
    """Nested dataclasses from sections (unset fields keep their defaults), maps -> pairs with
    unset entries dropped, lists -> tuples, Optional dataclasses, the mesh by mesh_pairs."""
    c = config_utils.from_dataclass(_Outer, name="x", knobs={"b": 1, "a": 2})
    assert dict(c.mesh) == {"data": 1, "fsdp": -1, "expert": 1, "tensor": 1}
    c.inner.sizes = [2, 3]
    c.sorted_knobs = {"z": 1, "y": None, "a": 3}
    c.table = {"t": ["a", "b"]}
    got = config_utils.freeze(_Outer, c, "outer")
    # (a ConfigDict keeps its keys sorted; a plain dict's order is kept, see below)
    assert got == _Outer(name="x", inner=_Inner(0.5, (2, 3)), knobs=(("a", 2), ("b", 1)),
                         sorted_knobs=(("a", 3), ("y", None), ("z", 1)), mesh=(("fsdp", -1),),
                         table={"t": ("a", "b")})
    plain = config_utils.freeze(_Outer, {"name": "y", "maybe": {"rate": 2.0},
                                         "knobs": {"b": 1, "a": None}}, "o")
    assert plain.maybe == _Inner(2.0, (1,)) and plain.knobs == (("b", 1),)
    assert config_utils.freeze(_Outer, got, "o") is got  # a frozen value passes through
    c.mesh.update(data=2, fsdp=4)
    # Without a -1 axis every declared axis stays (`mesh_pairs`: the recorded form of a mesh).
    assert config_utils.freeze(_Outer, c, "o").mesh == (("data", 2), ("expert", 1), ("fsdp", 4),
                                                        ("tensor", 1))


def test_freeze_names_unknown_fields_by_path():
    with pytest.raises(ValueError, match=r"outer\.inner: unknown field 'rat'; did you mean rate"):
        config_utils.freeze(_Outer, {"name": "x", "inner": {"rat": 1.0}}, "outer")
    with pytest.raises(ValueError, match=r"cold_start\.sft: unknown field 'stepz'"):
        r1_config.from_config_dict(parse("r1", "smoke", "cold_start.sft.steps=3").to_dict()
                                   | {"cold_start": {"sft": {"stepz": 1}}})


def test_every_stage_freezes_its_mesh_the_same_way():
    """GRPO, SFT, RM and pretraining configs of the r1 preset freeze an {axis: size} map to the
    same pairs (one handling: config_utils.mesh_field)."""
    config = parse("r1", "smoke", "sft.sft.mesh.data=2", "reward_model.train.mesh.data=2",
                   "pretrain.sft.mesh.data=2", "reasoning_rl.mesh.data=2",
                   "reasoning_rl.mesh.fsdp=-1")
    frozen = r1_config.from_config_dict(config)
    grpo = frozen.reasoning_rl.experiment("b", 0)
    meshes = {frozen.sft.sft.mesh, frozen.reward_model.train.mesh, frozen.pretrain.sft.mesh,
              grpo.mesh}
    assert meshes == {(("data", 2), ("fsdp", -1))}


#: The tiny R1-Zero preset's frozen config (flattened), pinned: a change to the presets, the
#: dataclass defaults or the freeze that alters it fails here.
TINY_R1_ZERO = {
    "async_checkpoints": True, "base_dir": "runs/base_tiny/base", "checkpoint_every": 20,
    "compilation_cache_dir": "auto", "data.bucket": 32, "data.jsonl_format": "math",
    "data.jsonl_on_error": "raise", "data.max_prompt_len": 256, "data.overlong": "error",
    "data.seed": 0, "data.task": "arithmetic",
    "data.task_knobs": [["max_digits", 2], ["min_digits", 2], ["ops", "+-"]],
    "data.template": "r1_zero", "data.test_jsonl": None, "data.train_jsonl": None,
    "eval.every": 20, "eval.greedy": True, "eval.max_new_tokens": None,
    "eval.num_logged_samples": 4, "eval.num_prompts": 64, "eval.num_samples": 4,
    "eval.temperature": 0.6, "eval.top_p": 0.95,
    "grpo.advantage_scale": "group", "grpo.aggregation": "seq_mean", "grpo.beta": 0.001,
    "grpo.bias_update_speed": None, "grpo.clip_eps_high": 0.28, "grpo.clip_eps_low": 0.2,
    "grpo.dynamic_sampling": False, "grpo.group_size": 8, "grpo.kl_estimator": "k3",
    "grpo.max_consecutive_nonfinite": 5, "grpo.max_extra_draws": 4,
    "grpo.max_nonfinite_fraction": 0.25, "grpo.nonfinite_window": 20, "grpo.num_iterations": 1,
    "grpo.num_micro_batches": 1, "grpo.num_minibatches": 2, "grpo.prompts_per_step": 8,
    "grpo.ref_update_every": 0, "keep_checkpoints": 3, "mesh": [["fsdp", -1]],
    "model_overrides": [], "num_slices": 1, "optim.b1": 0.9, "optim.b2": 0.95,
    "optim.end_lr_factor": 0.1, "optim.eps": 1e-08, "optim.grad_clip_norm": 1.0,
    "optim.learning_rate": 0.0002, "optim.schedule": "cosine", "optim.total_steps": 120,
    "optim.warmup_steps": 5, "optim.weight_decay": 0.1, "peak_flops": None, "plots": True,
    "progress_bar": True, "reward_workers": 2, "rewards.options": [], "rewards.routes": [],
    "rewards.weights": [["format_lenient", 0.5], ["format_strict", 0.5], ["numeric", 1.0]],
    "sampling.max_new_tokens": 112, "sampling.temperature": 1.0, "sampling.top_k": None,
    "sampling.top_p": None, "seed": 0, "tensorboard": True, "total_steps": 60,
    "toy_base_dir": "runs/base_tiny/base",
}


def test_tiny_r1_zero_frozen_config_is_pinned():
    """Pinned keys keep their values (new fields may be added; they are not pinned)."""
    frozen = rl_config.from_config_dict(parse("r1_zero", "tiny"))
    flat = config_utils.flatten(json.loads(json.dumps(dataclasses.asdict(frozen), default=str)))
    changed = {k: (flat.get(k, "<absent>"), v) for k, v in TINY_R1_ZERO.items()
               if flat.get(k, "<absent>") != v}
    assert not changed, changed


def _literal_defaults(root: pathlib.Path, names: set[str]) -> dict[tuple[str, object], list]:
    """{(field, literal default): [file:line, ...]} of dataclass-style field annotations
    `name: type = <number>` in every module under `root`."""
    found: dict[tuple[str, object], list] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and node.target.id in names and isinstance(node.value, ast.Constant)):
                key = (node.target.id, node.value.value)
                found.setdefault(key, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_each_default_is_written_once():
    """The sampling and evaluation temperatures, top-p, KL beta, group size and learning
    rate each have their literal default in one dataclass; others refer to it."""
    names = {"temperature", "top_p", "beta", "group_size", "learning_rate"}
    found = {key: where for key, where in _literal_defaults(ROOT / "r1jax", names).items()
             if key[1] is not None}  # None: the option is off, not a value
    repeated = {key: where for key, where in found.items() if len(where) > 1}
    assert not repeated, repeated
    assert ("temperature", 0.6) in found and ("temperature", 1.0) in found
    # The presets do not restate the defaults they keep (as keyword arguments).
    kept = {("temperature", 0.6), ("top_p", 0.95), ("temperature", 1.0), ("beta", 0.001)}
    for path in sorted((ROOT / "configs").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and isinstance(node.value, ast.Constant):
                assert (node.arg, node.value.value) not in kept, (path.name, node.arg)


def test_r1_grpo_sections_are_checked_when_the_pipeline_config_is_frozen():
    """A bad GRPO value of a later stage fails at the start, naming the stage and field."""
    config = parse("r1", "smoke", "all_scenario.grpo.group_size=1")
    with pytest.raises(ValueError, match=r"all_scenario: grpo\.group_size=1: must be an int >= 2"):
        r1_config.from_config_dict(config)
    config = parse("r1", "smoke", "distill.rl.sampling.top_p=1.5")
    with pytest.raises(ValueError, match=r"distill\.rl: sampling\.top_p=1\.5: must be in"):
        r1_config.from_config_dict(config)
