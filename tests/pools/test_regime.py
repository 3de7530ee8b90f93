"""The fine-tune regime verdict: hand-computed cases, and MergeGym's merges scored on the tiny zoo."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch
from rich.console import Console

import merge_env.pools.regime as regime_module
from merge_env.pools.regime import (
    FIXED_MERGES,
    LAMBDA_GRIDS,
    judge,
    own_vector_merge,
    own_vector_scores,
    regime_merges,
    scaled_merge,
    scaling_of,
    score_regime,
    share_intervals,
    task_vectors,
    tuned_name,
    with_alone,
)
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
    merging = small.sentences()[1]
    assert merging[0] is False and "none: b has no gain to keep" in merging[1]
    assert "ties d0.5: 0.83 -" in merging[1] and "nan" not in merging[1]
    # the uniform linear merge is shown but never decides the regime
    only_linear = judge(_scores(**{"linear uniform": {"a": 0.8, "b": 0.8}}), EXPERTS)
    assert math.isnan(only_linear.best_judged[1]) and not only_linear.merging_holds


def test_a_merge_exactly_the_tolerance_below_an_expert_counts_as_within_it():
    # 0.40 - 0.05 is 0.35000000000000003 in floats: without an allowance a merge at 0.35 would
    # be judged more than 0.05 below an expert at 0.40, and 0.75 against 0.80 would not
    rows = {
        BASE: {"a": 0.1, "b": 0.1},
        "exp_a": {"a": 0.40, "b": 0.2},
        "exp_b": {"a": 0.2, "b": 0.80},
        "ties d0.5": {"a": 0.35, "b": 0.75},
    }
    assert judge(rows, EXPERTS).dominant == ["ties d0.5"]


def _answers(n: int, right: int) -> list[bool]:
    """``right`` correct answers of ``n``, spread evenly (a fixed pattern, not random)."""
    return [(i * right) // n != ((i + 1) * right) // n for i in range(n)]


def test_shares_get_bootstrap_intervals_over_the_test_examples():
    n = 200
    base = _answers(n, 40)  # 0.2
    expert = [True] * n  # gain 0.8
    examples = {
        BASE: {"a": base},
        "exp_a": {"a": expert},
        "same": {"a": expert},  # keeps the whole gain on every example
        "none": {"a": base},  # keeps nothing
        "half": {"a": [b or i % 2 == 0 for i, b in enumerate(base)]},
    }
    scores = {row: {"a": sum(v["a"]) / n} for row, v in examples.items()}
    regime = judge(scores, {"a": "exp_a"}, examples=examples)
    assert regime.intervals["same"]["a"] == (1.0, 1.0)
    assert regime.intervals["none"]["a"] == (0.0, 0.0)
    lo, hi = regime.intervals["half"]["a"]
    share = regime.kept["half"]["a"]
    assert lo < share < hi and 0.05 < hi - lo < 0.4  # noisy at 200 examples, not degenerate
    # the same draw every time: a printed report is reproducible
    assert share_intervals(examples, {"a": "exp_a"}, ["half"])[0]["half"]["a"] == (lo, hi)
    # the verdict's statistic: the best merge re-chosen in every resample ("same", always 1)
    assert regime.verdict_interval == (1.0, 1.0)
    merging = regime.sentences()[1][1]
    assert (
        "best same (worst share 1.00; 95% bootstrap interval 1.00-1.00, the best merge" in merging
    )
    assert "clearly at or above 50%; this merge's shares a 1.00 [1.00, 1.00]" in merging
    # without "same" the best is "half" in most resamples, "none" never
    _, verdict = share_intervals(examples, {"a": "exp_a"}, ["none", "half"])
    assert verdict == (lo, hi)


def test_the_report_says_when_a_verdict_is_within_the_noise():
    n = 64
    base = [False] * n
    expert = [True] * n
    half = [i % 2 == 0 for i in range(n)]  # share 0.5 on 64 examples: +-0.12 or so
    most = [i % 8 != 0 for i in range(n)]  # share 0.875
    few = [i < 8 for i in range(n)]  # share 0.125
    # the best merge's verdict: one share clearly below the line decides; all clearly above it
    # too; anything else is within the noise, whatever the point estimates say
    for a, b, words in (
        (half, most, "within the test split's noise of 50%"),
        (most, few, "clearly below 50%"),
        (most, most, "clearly at or above 50%"),
    ):
        examples = {
            BASE: {"a": base, "b": base},
            "exp_a": {"a": expert, "b": base},
            "exp_b": {"a": base, "b": expert},
            "ties d0.5": {"a": a, "b": b},
        }
        scores = {row: {t: sum(v) / n for t, v in by.items()} for row, by in examples.items()}
        regime = judge(scores, {"a": "exp_a", "b": "exp_b"}, examples=examples)
        assert set(regime.intervals["ties d0.5"]) == {"a", "b"}
        assert words in regime.sentences()[1][1], words
    # two merges, each worst on another task: the verdict reads the better one per resample
    examples["task arith 0.5"] = {"a": few, "b": most}
    _, verdict = share_intervals(
        examples, {"a": "exp_a", "b": "exp_b"}, ["ties d0.5", "task arith 0.5"]
    )
    alone = share_intervals(examples, {"a": "exp_a", "b": "exp_b"}, ["ties d0.5"])[1]
    assert verdict == alone  # (most, most) beats (few, most) in every resample
    # an expert whose gain is not clearly positive has no interval, and the report says so
    flat = {BASE: {"a": half}, "exp_a": {"a": half}, "m": {"a": half}}
    intervals, verdict = share_intervals(flat, {"a": "exp_a"}, ["m"])
    assert all(math.isnan(x) for x in [*intervals["m"]["a"], *verdict])
    tiny = [i < 2 for i in range(n)]  # the expert gets 2 of 64 more: a gain of 0.03
    rows = {BASE: {"a": base}, "exp_a": {"a": tiny}, "ties d0.5": {"a": tiny}}
    regime = judge({r: {"a": sum(v["a"]) / n} for r, v in rows.items()}, {"a": "exp_a"},
                   examples=rows)  # fmt: skip
    assert "no interval: some resampled gain is not clearly positive" in regime.sentences()[1][1]
    with pytest.raises(ValueError, match="'m' and base scored different 'a' examples"):
        share_intervals({**examples, "m": {"a": half[:10]}}, {"a": "exp_a"}, ["m"])
    with pytest.raises(KeyError, match="no per-example results of 'm' on 'b'"):
        share_intervals({**examples, "m": {"a": half}}, {"a": "exp_a", "b": "exp_b"}, ["m"])


def test_merges_are_the_papers_settings():
    merges = regime_merges(["add", "reverse"])
    ties = merges["ties d0.5"]
    assert ties.merge_method == "ties" and ties.base_model == BASE
    assert [m.parameters for m in ties.models] == [{"weight": 1.0, "density": 0.5}] * 2
    assert ties.parameters["normalize"] is True
    assert [m.parameters["weight"] for m in merges["task arith 0.5"].models] == [0.5, 0.5]
    assert merges["linear uniform"].base_model is None
    # λ = 1 is the fixed TIES merge itself; other λ scale TIES's merged vector (mergekit's lambda)
    # and set every task-arithmetic weight
    assert scaled_merge("ties d0.5", ["add", "reverse"], 1.0) == ties
    assert scaled_merge("ties d0.5", ["add", "reverse"], 1.3).parameters == {
        "normalize": True,
        "lambda": 1.3,
    }
    assert [m.parameters["weight"] for m in scaled_merge("task arith", ["a", "b"], 0.7).models] == [
        0.7,
        0.7,
    ]
    assert LAMBDA_GRIDS["task arith"][0] == 0.1 and LAMBDA_GRIDS["task arith"][-1] == 1.0
    assert LAMBDA_GRIDS["ties d0.5"][0] == 0.8 and LAMBDA_GRIDS["ties d0.5"][-1] == 1.8
    with pytest.raises(ValueError, match="no merge family 'slerp'"):
        scaled_merge("slerp", ["a"], 0.5)


def test_tuned_merges_are_judged_and_the_linear_one_is_not():
    name = tuned_name("task arith", 0.7)
    regime = judge(
        _scores(**{name: {"a": 0.6, "b": 0.7}, "linear uniform": {"a": 0.8, "b": 0.9}}), EXPERTS
    )
    # the tuned merge decides (2/3 and 3/5 kept); the better linear merge is shown only
    assert regime.best_judged == (name, pytest.approx(0.6)) and regime.merging_holds


def test_each_judged_row_names_its_method_and_scaling():
    assert [scaling_of(r) for r in FIXED_MERGES] == [
        ("ties d0.5", 1.0),
        ("task arith", 0.5),
        ("task arith", 1.0),
    ]
    # the rows and specs regime_merges gave before FIXED_MERGES (literal, not rebuilt)
    merges = regime_merges(["a", "b"])
    assert list(merges) == ["ties d0.5", "task arith 0.5", "task arith 1.0", "linear uniform"]
    assert "lambda" not in merges["ties d0.5"].parameters
    assert [m.parameters["weight"] for m in merges["task arith 1.0"].models] == [1.0, 1.0]
    assert merges["task arith 1.0"].merge_method == "task_arithmetic"
    for family, grid in LAMBDA_GRIDS.items():
        for lam in grid:
            assert scaling_of(tuned_name(family, lam)) == (family, lam)
    for row in ("linear uniform", BASE, "add", "slerp λ0.5 (val)", "task arith λ0.5",
                "task arith λ1.2.3 (val)", "task arith λ. (val)"):  # fmt: skip
        assert scaling_of(row) is None


def test_alone_splits_the_best_merges_loss_into_scaling_and_interference(monkeypatch):
    name = tuned_name("task arith", 0.7)
    scores = _scores(**{name: {"a": 0.5, "b": 0.7}})
    regime = judge(scores, EXPERTS)
    assert regime.alone == {} and regime.alone_sentence() is None
    calls = []

    def scored(sources, tasks, tokenizer_dir, row, **kw):
        calls.append(row)
        return {"a": 0.65, "b": 0.9}

    monkeypatch.setattr(regime_module, "own_vector_scores", scored)
    measured = with_alone(regime, scores, {}, [], "tok")
    # own vector alone: (0.65 - 0.2) / 0.6 and (0.9 - 0.4) / 0.5; merged: 0.5 and 0.6
    assert calls == [name]
    assert measured.alone == {"a": pytest.approx(0.75), "b": pytest.approx(1.0)}
    assert measured.kept == regime.kept and measured.holds == regime.holds
    sentence = measured.alone_sentence()
    assert f"where {name} loses the gains" in sentence
    assert "a 0.75 -> 0.50, b 1.00 -> 0.60" in sentence
    calls.clear()
    # an expert without a gain leaves every worst share NaN: no best merge, nothing measured
    flat = _scores(**{name: {"a": 0.5, "b": 0.7}, "ties d0.5": {"a": 0.6, "b": 0.8}})
    flat["exp_b"] = {"a": 0.1, "b": 0.4}
    assert with_alone(judge(flat, EXPERTS), flat, {}, [], "tok").alone == {} and not calls
    # no judged merge with a scaling (only the shown-only linear one): nothing is measured
    lone = _scores(**{"linear uniform": {"a": 0.5, "b": 0.7}})
    assert with_alone(judge(lone, EXPERTS), lone, {}, [], "tok").alone == {} and not calls


def test_own_vector_merges_are_the_expert_alone_scaled_on_the_tiny_zoo(tiny_zoo):
    from safetensors.torch import load_file

    from merge_env.search.assemble import ModelPool

    sources = {BASE: tiny_zoo.base, **tiny_zoo.experts}
    pool = ModelPool(sources)
    base = load_file(str(tiny_zoo.base / "model.safetensors"))
    expert = next(iter(tiny_zoo.experts))
    tuned = load_file(str(tiny_zoo.experts[expert] / "model.safetensors"))
    # task arithmetic: base + λ τ of this expert, nothing of the others
    arith = pool.merged_model(own_vector_merge(tuned_name("task arith", 0.4), expert))
    for name, value in arith.state_dict().items():
        want = base[name] + 0.4 * (tuned[name] - base[name])
        assert torch.allclose(value, want, atol=1e-6), name
    # TIES alone: the larger-|τ| half of each tensor kept, times λ; the rest left at the base
    # (an embedding row the expert never trained has τ = 0 and stays, kept or not)
    ties = pool.merged_model(own_vector_merge(tuned_name("ties d0.5", 1.3), expert))
    checked = 0
    for name, value in ties.state_dict().items():
        tau = tuned[name] - base[name]
        moved = value != base[name]
        if tau.numel() < 4 or not moved.any():
            continue
        checked += 1
        assert moved.float().mean() <= 0.5 + 1e-3, name
        if (tau != 0).float().mean() > 0.9:
            assert moved.float().mean() == pytest.approx(0.5, abs=0.02), name
        assert torch.allclose(value[moved], (base[name] + 1.3 * tau)[moved], atol=1e-6), name
        assert tau[moved].abs().min() >= tau[~moved].abs().max() - 1e-7, name
    assert checked > 10
    with pytest.raises(ValueError, match="'linear uniform' is not a judged merge"):
        own_vector_merge("linear uniform", expert)


def test_own_vector_scores_score_each_expert_on_its_own_task(tiny_zoo):
    sources = {BASE: tiny_zoo.base, **tiny_zoo.experts}
    # at task arithmetic 1.0 an expert's vector alone is the expert: its own-task score
    alone = own_vector_scores(sources, tiny_zoo.tasks, tiny_zoo.tokenizer_dir, "task arith 1.0")
    scores = score_regime(sources, tiny_zoo.tasks, tiny_zoo.tokenizer_dir)
    assert alone == {t: pytest.approx(scores[t][t]) for t in tiny_zoo.experts}
    with pytest.raises(ValueError, match="'linear uniform' is not a judged merge"):
        own_vector_scores(sources, tiny_zoo.tasks, tiny_zoo.tokenizer_dir, "linear uniform")
    renamed = {BASE: tiny_zoo.base, "nope": next(iter(tiny_zoo.experts.values()))}
    with pytest.raises(ValueError, match=r"experts \['nope'\] are named for no task"):
        own_vector_scores(renamed, tiny_zoo.tasks, tiny_zoo.tokenizer_dir, "task arith 0.5")


def test_lambda_is_chosen_on_the_search_split_and_judged_on_test(tiny_zoo):
    sources = {BASE: tiny_zoo.base, **tiny_zoo.experts}
    grids = {"task arith": (0.3, 1.0), "ties d0.5": (1.0, 1.5)}
    curves: dict = {}
    scores = score_regime(
        sources, tiny_zoo.tasks, tiny_zoo.tokenizer_dir, grids=grids, curves=curves
    )
    assert set(curves) == set(grids) and all(set(c) == set(grids[f]) for f, c in curves.items())
    # each family's row is the λ with the best mean SEARCH score (the first on a tie), on TEST
    fixed = score_regime(sources, tiny_zoo.tasks, tiny_zoo.tokenizer_dir)
    search = score_regime(sources, tiny_zoo.tasks, tiny_zoo.tokenizer_dir, split="search")
    for family, curve in curves.items():
        best = max(curve.values())
        lam = next(lam for lam, mean in curve.items() if mean == best)
        assert tuned_name(family, lam) in scores
        if family == "task arith" and lam == 1.0:
            assert curve[1.0] == pytest.approx(
                sum(search["task arith 1.0"].values()) / len(tiny_zoo.tasks)
            )
            assert scores[tuned_name(family, lam)] == fixed["task arith 1.0"]
        if family == "ties d0.5":
            assert curve[1.0] == pytest.approx(
                sum(search["ties d0.5"].values()) / len(tiny_zoo.tasks)
            )
    tuned = [n for n in scores if n.endswith("(val)")]
    assert len(tuned) == 2 and judge(scores, {t: t for t in tiny_zoo.experts}).kept.keys() >= set(
        tuned
    )
    with pytest.raises(ValueError, match="cannot be judged on the same split"):
        score_regime(sources, tiny_zoo.tasks, tiny_zoo.tokenizer_dir, split="search", grids=grids)


def test_scores_on_the_tiny_zoo_match_a_hand_merge(tiny_zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from merge_env.scoring.evaluate import Evaluator

    sources = {BASE: tiny_zoo.base, **tiny_zoo.experts}
    examples: dict = {}
    scores = score_regime(sources, tiny_zoo.tasks, tiny_zoo.tokenizer_dir, examples=examples)
    assert set(scores) == {BASE, *tiny_zoo.experts, *regime_merges(list(tiny_zoo.experts))}
    # the per-example results behind every score, one per TEST example
    assert set(examples) == set(scores)
    for row, by_task in scores.items():
        for task in tiny_zoo.tasks:
            answers = examples[row][task.name]
            assert len(answers) == len(task.test)
            assert by_task[task.name] == pytest.approx(sum(answers) / len(answers))
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
    assert "bootstrap interval" in text or "no interval" in text or "has no gain" in text
    # where the best merge loses the gains, unless some expert has none (no best merge then)
    assert ("loses the gains" in text) == ("has no gain" not in text)
    # last, the main job's references against a perfect model: z* from the single models'
    # SEARCH exact match, scored here by the evaluator alone; a perfect model scores 1 / z* a
    # task (1 where no single model gets an answer right: that task keeps its own scale)
    from transformers import AutoTokenizer

    from merge_env.scoring.evaluate import Evaluator
    from merge_env.search.assemble import load_causal_lm

    evaluator = Evaluator(AutoTokenizer.from_pretrained(tiny_zoo.tokenizer_dir))
    singles = [evaluator.score_tasks(load_causal_lm(p), tiny_zoo.tasks, "search")
               for p in [tiny_zoo.base, *tiny_zoo.experts.values()]]  # fmt: skip
    ideal = [max(s[t.name].exact_match for s in singles) for t in tiny_zoo.tasks]
    ceiling = math.prod(1 / z if z > 0 else 1.0 for z in ideal)
    flat = " ".join(text.split())
    found = re.search(r"TEST hypervolume ([\d.]+); a perfect model ([\d.]+) \(z\* ([\d./ ]+) on "
                      r"SEARCH\): no front can beat the references on TEST by more than", flat)  # fmt: skip
    assert found, flat[-600:]
    assert found.group(2) == f"{ceiling:.4f}"
    assert found.group(3).strip() == " / ".join(f"{z:.3f}" for z in ideal)
    assert 0 <= float(found.group(1)) <= ceiling


def test_task_vectors_by_part_match_a_hand_computation(tiny_zoo, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from merge_env.errors import CheckpointError

    def state(folder):
        return load_file(next(iter(sorted(folder.glob("*.safetensors")))))

    base = state(tiny_zoo.base)
    experts = {t: state(p) for t, p in tiny_zoo.experts.items()}
    vectors = task_vectors(tiny_zoo.base, tiny_zoo.experts)
    embeddings = [k for k in base if "embed_tokens" in k or "lm_head" in k]
    assert embeddings and set(vectors.relative) == {"body", "embeddings"}
    for part in ("body", "embeddings"):
        keys = [k for k in base if (k in embeddings) == (part == "embeddings")]
        origin = torch.cat([base[k].flatten().double() for k in keys])
        flat = {t: torch.cat([e[k].flatten().double() for k in keys]) - origin
                for t, e in experts.items()}  # fmt: skip
        for t, v in flat.items():
            assert vectors.relative[part][t] == pytest.approx(float(v.norm() / origin.norm()))
        (a, b), cos = next(iter(vectors.cosine[part].items()))
        assert cos == pytest.approx(float(flat[a] @ flat[b] / (flat[a].norm() * flat[b].norm())))
    assert "body: size against the base" in vectors.sentences()[0]
    # the base as an expert: no vector, no direction
    same = task_vectors(tiny_zoo.base, {"base": tiny_zoo.base, **tiny_zoo.experts})
    assert same.relative["body"]["base"] == 0.0
    assert all(math.isnan(c) for (a, _), c in same.cosine["body"].items() if a == "base")
    assert "base-" in same.sentences()[0] and "n/a" in same.sentences()[0]
    assert "nan" not in " ".join(same.sentences())
    alone = task_vectors(tiny_zoo.base, {"a": tiny_zoo.base, "b": tiny_zoo.base})
    assert alone.sentences() == [
        "body: unchanged by every expert (no task vector, no cosine)",
        "embeddings: unchanged by every expert (no task vector, no cosine)",
    ]
    # an expert lacking a tensor, or holding it in another shape, is named
    name, task = next(k for k in base if "layers.0" in k), next(iter(tiny_zoo.experts))
    for change, words in (("drop", "not found"), ("reshape", "has shape")):
        broken = tmp_path / change
        shutil.copytree(tiny_zoo.experts[task], broken)
        file = next(iter(sorted(broken.glob("*.safetensors"))))
        tensors = load_file(file)
        if change == "drop":
            del tensors[name]
        else:
            tensors[name] = tensors[name].flatten()[:3].clone()
        save_file(tensors, file)
        with pytest.raises(CheckpointError, match=re.escape(repr(name)) + f".*{words}"):
            task_vectors(tiny_zoo.base, {task: broken})
