"""The R1 config's GRPO sections are frozen, checked dataclass trees from the start (issue 20):
a bad field of any stage fails when the pipeline config is frozen, naming the stage and field,
and the stage's run config is the one the trainer got from the plain section before."""

import dataclasses

import pytest
from conftest import config_preset

from r1jax.r1 import config as r1_config
from r1jax.rl import config as rl_config


@pytest.fixture(scope="module")
def smoke():
    return config_preset("r1", "smoke")


def _with(config, section: str, **values) -> dict:
    """The preset as a plain dict with top-level fields of GRPO `section` replaced (keys that
    the command line would refuse, e.g. misspelled ones, included)."""
    d = config.to_dict()
    d[section] = dict(d[section], **values)
    return d


@pytest.mark.parametrize("section, values, message", [
    ("reasoning_rl", {"checkpoint_evry": 5},
     r"reasoning_rl: config: unknown field 'checkpoint_evry'; did you mean checkpoint_every"),
    ("r1_zero", {"keep_checkpoints": 0}, r"r1_zero: config\.keep_checkpoints=0: must be an int"),
    ("all_scenario", {"rewards": {"numeric": 1.0, "reward_model": 1.0, "nosuch": 1.0}},
     r"all_scenario: unknown reward 'nosuch'"),
    ("all_scenario", {"reward_routes": {"preference": ["reward_model", "numerik"]}},
     r"all_scenario: reward route 'preference': \['numerik'\] are not weighted"),
    ("reasoning_rl", {"mesh": {"fsdp": -1, "model": 2}}, r"reasoning_rl: .*mesh.*model"),
])
def test_a_bad_grpo_field_fails_when_the_r1_config_is_frozen(smoke, section, values, message):
    with pytest.raises(ValueError, match=message):
        r1_config.from_config_dict(_with(smoke, section, **values))


def test_nested_parts_and_distill_are_checked_too(smoke):
    d = smoke.to_dict()
    d["all_scenario"]["optim"]["schedule"] = "cosin"
    with pytest.raises(ValueError, match=r"all_scenario: .*schedule"):
        r1_config.from_config_dict(d)
    d = smoke.to_dict()
    d["distill"]["rl"]["data"]["jsonl_format"] = "csv"
    with pytest.raises(ValueError, match=r"distill\.rl: data\.jsonl_format='csv'"):
        r1_config.from_config_dict(d)
    d = smoke.to_dict()
    del d["reasoning_rl"]
    with pytest.raises(ValueError, match=r"config\.reasoning_rl: the GRPO section is missing"):
        r1_config.from_config_dict(d)


def test_sections_are_frozen_trees_and_build_the_trainers_config(smoke):
    frozen = r1_config.from_config_dict(smoke)
    section = frozen.reasoning_rl
    assert isinstance(section.run, rl_config.ExperimentConfig)
    assert section.run.grpo.group_size == smoke.reasoning_rl.grpo.group_size
    with pytest.raises(dataclasses.FrozenInstanceError):
        section.name = "x"
    with pytest.raises(AttributeError):
        section.values.total_steps = 5
    assert hash(frozen.r1_zero) == hash(r1_config.from_config_dict(smoke).r1_zero)
    # The stage's config: what rl.config froze from the plain section with the stage's inputs.
    plain = dict(smoke.reasoning_rl.to_dict(), base_dir="/start", seed=7)
    assert section.experiment("/start", 7) == rl_config.from_config_dict(plain)
    # total_steps 0 is the stage's to set: r1_zero is left out, distill.rl counts its budget.
    assert frozen.r1_zero.total_steps == 0 and not frozen.runs_r1_zero()
    assert frozen.distill.rl.experiment("/s", 0, total_steps=3).total_steps == 3
    # The learned reward model and the judge are passed in by the stage, so they are not in
    # the checked spec, but stay in the section: the stage's run needs them (and fails
    # without them).
    weights = dict(frozen.all_scenario.run.rewards.weights)
    assert not {"reward_model", "judge"} & set(weights) and "numeric" in weights
    assert frozen.all_scenario.provided == ("reward_model", "judge")
    for _ in range(2):  # building `run` edited nothing the next call reads
        with pytest.raises(ValueError, match="all_scenario: unknown reward '(judge|reward_model)'"):
            frozen.all_scenario.experiment("/s", 0)
    assert frozen.all_scenario.values.rewards.reward_model == 1.0


def test_rejection_stage_checks_the_judge_fields():
    """judge_from names the judge's start model; worded_share is a share; the worded task
    joins the judge's tasks when some prompts are worded."""
    from r1jax.data.tasks import worded

    with pytest.raises(ValueError, match="judge_from='sft'"):
        r1_config.RejectionStage(judge_from="sft")
    with pytest.raises(ValueError, match="worded_share=1.5"):
        r1_config.RejectionStage(worded_share=1.5)
    assert r1_config.RejectionStage().sampler("numeric").judge_tasks == ()
    assert r1_config.RejectionStage(worded_share=0.5).sampler("numeric").judge_tasks == (
        worded.WORDED_TASK,)
