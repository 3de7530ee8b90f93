"""The fine-tune regime verdict: hand-computed cases, and MergeGym's merges scored on the tiny zoo."""

from __future__ import annotations

import io
import math

import pytest
import torch
from rich.console import Console

from merge_env.pools.regime import judge, regime_merges, score_regime
from merge_env.search.recipe import BASE

EXPERTS = {"a": "exp_a", "b": "exp_b"}


def _scores(**merges):
    rows = {
        BASE: {"a": 0.2, "b": 0.4},
        "exp_a": {"a": 0.8, "b": 0.3},
        "exp_b": {"a": 0.1, "b": 0.9},
    }
    rows.update(merges)
    return rows


def test_a_merge_that_keeps_half_of_each_gain_holds():
    # gains: a 0.6, b 0.5; the merge keeps 0.5 and 0.6 of them, and loses > 0.05 to each expert
    regime = judge(_scores(**{"ties d0.5": {"a": 0.5, "b": 0.7}}), EXPERTS)
    assert regime.gains == pytest.approx({"a": 0.6, "b": 0.5})
    assert regime.kept["ties d0.5"] == pytest.approx({"a": 0.5, "b": 0.6})
    assert regime.best_judged == ("ties d0.5", pytest.approx(0.5))
    assert regime.holds and all(ok for ok, _ in regime.sentences())


def test_each_check_can_fail():
    # keeps only a third of a's gain
    weak = judge(_scores(**{"task arith 0.5": {"a": 0.4, "b": 0.9}}), EXPERTS)
    assert weak.kept["task arith 0.5"]["a"] == pytest.approx(1 / 3) and not weak.merging_holds
    # as good as both experts everywhere (within 0.05): no front
    flat = judge(_scores(**{"task arith 1.0": {"a": 0.8, "b": 0.86}}), EXPERTS)
    assert flat.dominant == ["task arith 1.0"] and not flat.holds
    # an expert gaining 0.25 fails the gain check; one that loses has no kept share
    rows = _scores(**{"ties d0.5": {"a": 0.7, "b": 0.5}})
    rows["exp_b"]["b"] = 0.3
    small = judge(rows, EXPERTS)
    assert not small.gains_hold and math.isnan(small.kept["ties d0.5"]["b"])
    # the uniform linear merge is shown but never decides the regime
    only_linear = judge(_scores(**{"linear uniform": {"a": 0.8, "b": 0.8}}), EXPERTS)
    assert math.isnan(only_linear.best_judged[1]) and not only_linear.merging_holds


def test_merges_are_the_papers_settings():
    merges = regime_merges(["add", "reverse"])
    ties = merges["ties d0.5"]
    assert ties.merge_method == "ties" and ties.base_model == BASE
    assert [m.parameters for m in ties.models] == [{"weight": 1.0, "density": 0.5}] * 2
    assert ties.parameters["normalize"] is True
    assert [m.parameters["weight"] for m in merges["task arith 0.5"].models] == [0.5, 0.5]
    assert merges["linear uniform"].base_model is None


def test_scores_on_the_tiny_zoo_match_a_hand_merge(tiny_zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from merge_env.scoring.evaluate import Evaluator

    sources = {BASE: tiny_zoo.base, **tiny_zoo.experts}
    scores = score_regime(sources, tiny_zoo.tasks, tiny_zoo.tokenizer_dir)
    assert set(scores) == {BASE, *tiny_zoo.experts, *regime_merges(list(tiny_zoo.experts))}
    # task arithmetic 1.0 by hand: base + sum of task vectors, scored by the same evaluator
    base = AutoModelForCausalLM.from_pretrained(tiny_zoo.base).eval()
    experts = [
        AutoModelForCausalLM.from_pretrained(p).state_dict() for p in tiny_zoo.experts.values()
    ]
    state = base.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            tensor.add_(sum(e[name] - tensor for e in experts))
    evaluator = Evaluator(AutoTokenizer.from_pretrained(tiny_zoo.tokenizer_dir))
    hand = evaluator.score_tasks(base, tiny_zoo.tasks, "test")
    for task in tiny_zoo.tasks:
        assert scores["task arith 1.0"][task.name] == pytest.approx(hand[task.name].exact_match)


def test_builder_prints_the_regime(tiny_zoo):
    from experiments.build_zoo import run

    out = io.StringIO()
    run(
        "tiny", cache_dir=tiny_zoo.root.parent, progress=False, console=Console(file=out, width=240)
    )
    text = out.getvalue()
    assert "fine-tune regime" in text and "task arith 0.5" in text
    assert "regime holds" in text or "regime does NOT hold" in text
