"""Offline evaluation: the vote and metrics on constructed samples, prompt selection and
batching, an HF directory end to end, and `experiments/eval.py` reproducing a GRPO run's
logged evaluation (same prompts, same key -> same numbers and the same sampled completions).
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from r1jax.data import pipeline, tasks, templates
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.evals import evaluate
from r1jax.models import config as model_config_lib
from r1jax.models import transformer
from r1jax.rl import runs
from r1jax.train import base, metrics

REPO = pathlib.Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# The vote and the metrics
# ---------------------------------------------------------------------------------------------


def test_vote_is_judged_by_the_sample_scores():
    answers = [["7", "7", "8", None],   # majority 7, scored correct
               ["1", "2", "2", "1"],    # tie: the first to appear (1) wins; it was wrong
               [None, None, None, None]]  # nothing extracted: no vote, counts as wrong
    correct = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], np.float32)
    votes, ok = evaluate.vote(answers, correct)
    assert votes == ["7", "1", None]
    assert ok.tolist() == [True, False, False]
    assert evaluate.cons_at_k(answers, correct) == pytest.approx(1 / 3)


def test_cons_at_k_is_not_bounded_by_pass_at_1():
    # Most samples agree on the right answer: the vote lifts the accuracy above pass@1.
    agree = [["5", "5", "5", "9"], ["3", "3", "4", "2"]]
    agree_ok = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
    assert evaluate.cons_at_k(agree, agree_ok) == 1.0 > agree_ok.mean()
    # Right answers scattered, one wrong answer repeated: the vote is worse than pass@1.
    split = [["2", "2", "6", "6"]]
    split_ok = np.array([[0, 0, 1, 1]], np.float32)
    assert evaluate.cons_at_k(split, split_ok) == 0.0 < split_ok.mean()


def test_normalise_answer_ignores_whitespace_only():
    assert evaluate.normalise_answer(" 78 - 9 -5 ") == "78-9-5"
    assert evaluate.normalise_answer("   ") is None and evaluate.normalise_answer(None) is None
    assert evaluate.normalise_answer("1,000") != evaluate.normalise_answer("1000")


def test_vote_reads_answers_as_the_accuracy_reward_does():
    """An answer written only inside <think> is no vote (rewards.answer: it earns no accuracy
    either), unless the accuracy reward's answer_in_think option reads the reasoning."""
    from r1jax.rewards import registry

    template = templates.get("r1_zero")
    texts = ["<think> try <answer>5</answer> </think> <answer> 7 </answer>",
             "<think> maybe <answer>5</answer> </think> no answer",
             "<think> 1 + 1 </think> <answer>1 + 1</answer>"]
    spec = registry.Spec.from_dict({"numeric": 1.0, "format_strict": 1.0})
    assert evaluate.vote_answers(texts, template, spec) == ["7", None, "1+1"]
    reads_think = registry.Spec.from_dict({"numeric": 1.0}, {"numeric": {"answer_in_think": True}})
    assert evaluate.vote_answers(texts, template, reads_think)[1] == "5"
    # The accuracy reward agrees with the vote on the answer-only-in-think completion.
    assert spec.reward("numeric")([texts[1]], answer=["5"])[0] == 0.0
    assert reads_think.reward("numeric")([texts[1]], answer=["5"])[0] == 1.0


def test_compute_metrics_on_constructed_samples():
    k = 2
    sampled = {"accuracy": np.array([1, 0, 1, 1], np.float32),
               "lenient_accuracy": np.array([1, 1, 1, 1], np.float32),
               "format": np.array([1, 0, 0, 0], np.float32),
               "lengths": np.array([4, 6, 8, 10], np.int32),
               "rewards": np.array([2.0, 0.0, 1.0, 1.0], np.float32),
               "language": np.array([1.0, 0.5, 1.0, 0.5], np.float32),
               "answers": ["4", "5", "9", "9"], "texts": ["a", "b", "c", "d"]}
    greedy = {"accuracy": np.array([0, 1], np.float32),
              "lenient_accuracy": np.array([1, 1], np.float32)}
    m = evaluate.compute_metrics(sampled, greedy, k)
    assert m["pass@1"] == 0.75 and m["pass@2"] == 1.0 and m["cons@2"] == 1.0
    assert m["format_rate"] == 0.25 and m["lenient_accuracy"] == 1.0
    assert m["response_length"] == 7.0 and m["reward"] == 1.0
    assert m["language_consistency"] == 0.75 and m["greedy_accuracy"] == 0.5
    assert "greedy_accuracy" not in evaluate.compute_metrics(sampled, None, k)
    table = evaluate.format_table(m)
    assert "| pass@1 | 75.0% |" in table and "| response_length | 7.000 |" in table


def test_settings_are_validated():
    with pytest.raises(ValueError, match="num_samples=0"):
        evaluate.Settings(num_samples=0)
    with pytest.raises(ValueError, match="temperature"):
        evaluate.Settings(temperature=0.0)
    assert evaluate.Settings().replace(top_p=None).top_p is None


# ---------------------------------------------------------------------------------------------
# Prompts and an HF checkpoint directory
# ---------------------------------------------------------------------------------------------


def word_tokenizer(path: pathlib.Path, size: int) -> None:
    """A word-level HF tokenizer with `size` ids (the fixture model's vocabulary is tiny)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    words = list(tokenizer_lib.SPECIAL_PIECES) + ["<pad>", "[UNK]"] + list("0123456789+-*=?") \
        + "What is the answer User Assistant : . <think> </think>".split()
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words[:size]))}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_qwen2")
    shutil.copytree(REPO / "tests/fixtures/hf/qwen2", path, dirs_exist_ok=True)
    word_tokenizer(path, 96)
    return runs.load(path)


def test_generated_prompts_batch_like_the_trainer(hf_model):
    knobs = {"min_digits": 1, "max_digits": 2}
    examples, name = runs.select_examples(hf_model, task="arithmetic", knobs=knobs,
                                              num_prompts=5)
    assert name == "arithmetic-test" and len(examples) == 5
    batches = evaluate.prompt_batches(examples, hf_model, batch_size=2, max_prompt_len=256)
    assert [len(b["prompt"]) for b in batches] == [2, 2, 1]
    # One batch of all prompts is the batch the trainer's loader makes of the same stream.
    source = pipeline.generated_source(tasks.get("arithmetic", **knobs), "test", 0)
    loader = pipeline.prompt_loader(source, hf_model.tokenizer, hf_model.template.format_prompt,
                                    pipeline.PromptConfig(batch_size=5, max_prompt_len=256))
    ours = evaluate.prompt_batches(examples, hf_model, batch_size=5, max_prompt_len=256)[0]
    np.testing.assert_array_equal(ours["prompt_tokens"], loader.batch(0)["prompt_tokens"])
    assert ours["question"] == loader.batch(0)["question"]
    with pytest.raises(ValueError, match="needs prompts"):
        runs.select_examples(hf_model)


def test_hf_directory_end_to_end_on_jsonl(hf_model, tmp_path):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 1 ?",
                                        "answer": f"so #### {i + 1}"}) + "\n" for i in range(3)))
    examples, name = runs.select_examples(hf_model, jsonl=str(data), jsonl_format="gsm8k")
    assert name == "gsm8k" and [e["answer"] for e in examples] == ["1", "2", "3"]
    settings = evaluate.Settings(num_samples=2, max_new_tokens=4, batch_size=2)
    assert evaluate.rewards_for(hf_model, examples) == evaluate.DEFAULT_REWARDS
    result = evaluate.evaluate(hf_model, examples, settings, jax.random.PRNGKey(0),
                               max_prompt_len=128, reward_workers=1, progress=False)
    assert set(result.metrics) >= {"pass@1", "pass@2", "cons@2", "greedy_accuracy",
                                   "format_rate", "language_consistency", "response_length"}
    assert 1 <= result.metrics["response_length"] <= 4
    assert [len(p["completions"]) for p in result.problems] == [2, 2, 2]
    evaluate.write_result(tmp_path / "out" / "r.json", result, checkpoint=hf_model.source)
    written = json.loads((tmp_path / "out" / "r.json").read_text())
    assert written["metrics"] == pytest.approx(result.metrics)
    assert written["checkpoint"] == hf_model.source


def test_load_names_what_it_cannot_read(tmp_path):
    with pytest.raises(ValueError, match="neither an r1jax run directory"):
        runs.load(tmp_path)


# ---------------------------------------------------------------------------------------------
# experiments/eval.py reproduces a GRPO run's evaluation
# ---------------------------------------------------------------------------------------------


def random_base(root: pathlib.Path) -> pathlib.Path:
    task = tasks.get("arithmetic", min_digits=1, max_digits=2)
    template = templates.get("r1_zero")
    texts = [f"{template.format_prompt(e['question'])} <think> {e['worked_solution']} "
             f"</think> <answer> {e['answer']} </answer>"
             for e in (task.example("train", 0, i) for i in range(200))]
    tok = tokenizer_lib.train_sentencepiece(texts, 400, root / "tok" / "tokenizer.model")
    model = model_config_lib.ModelConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
        qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, first_k_dense_replace=1, max_position_embeddings=256,
        original_max_position_embeddings=256)
    return base.save_base(root / "base", model, transformer.random_params(model, 0),
                          root / "tok" / "tokenizer.model")


# The trainer called as experiments/r1_zero.py does, on the smoke preset shortened to 2 steps
# (evaluations at steps 0 and 2), logging every sampled completion of the last evaluation.
_TRAIN = f"""
import sys
sys.path.insert(0, {str(REPO / "configs")!r})
import r1_zero
from r1jax.rl import trainer
config = r1_zero.get_config("smoke")
config.base_dir, config.total_steps, config.eval.num_logged_samples = sys.argv[1], 2, 8
trainer.train(config, sys.argv[2])
"""


def run_script(args, env, timeout=900):
    out = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


@pytest.mark.slow
def test_eval_script_reproduces_the_runs_last_evaluation(tmp_path):
    # One CPU device with cheap compiles (LLVM -O0, no fusion emitters): both processes are
    # mostly XLA compiling, and both compile under the same flags, so the numbers still match.
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1 "
                         "--xla_backend_optimization_level=0 "
                         "--xla_llvm_disable_expensive_passes=true "
                         "--xla_cpu_use_fusion_emitters=false",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    base_dir, workdir = random_base(tmp_path), tmp_path / "run"
    run_script(["-c", _TRAIN, str(base_dir), str(workdir)], env)
    out = run_script(["experiments/eval.py", f"--checkpoint={workdir}",
                      f"--output={tmp_path / 'eval.json'}"], env)
    assert "| greedy_accuracy |" in out and "| cons@4 |" in out

    result = json.loads((tmp_path / "eval.json").read_text())
    logged = [r for r in metrics.read_jsonl(workdir / "metrics.jsonl") if "eval/pass@1" in r][-1]
    assert logged["step"] == 2 and result["checkpoint"].endswith("@2")
    for name, value in result["metrics"].items():
        if f"eval/{name}" in logged:
            assert value == logged[f"eval/{name}"], name  # exact: same prompts, same key
    # The sampled completions themselves are the run's (its samples.jsonl logs all 2 x 4).
    samples = [r for r in metrics.read_jsonl(workdir / "samples.jsonl") if r["step"] == 2]
    ours = [c for p in result["problems"] for c in p["completions"]]
    assert ours == [s["completion"] for s in samples] and len(ours) == 8
