"""MergeME: Mixtral build, training-free routers, perplexity routing, heterogeneous experts."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from merge_env.errors import CheckpointError, ConfigError, MergeError
from merge_env.merging.engine import MergeEngine
from merge_env.methods.moe.hetero import HeteroMoE, build_hetero, check_hetero_shapes, train_hetero
from merge_env.methods.moe.mixtral import build_mixtral, shared_merge
from merge_env.methods.moe.ppl import ForcedExpert, PplRoutedMoE, ppl_moe_merged, ppl_moe_separate
from merge_env.methods.moe.routers import router_rows, token_routing_share
from merge_env.methods.moe.sequence import encode_prompts, pad_right, routing_confusion
from merge_env.scoring.tasks.synthetic import char_tokenizer
from merge_env.scoring.tasks.task import Example


def _load(path):
    return AutoModelForCausalLM.from_pretrained(path).eval()


def _logits(model, ids, mask=None):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    return out.logits


def _tok():
    """A character tokenizer whose 33 ids fit the tiny models' vocabularies."""
    return char_tokenizer("abcdefghijklmnop=+0123456789 ")


IDS = torch.randint(4, 64, (3, 11), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def trio(tiny_factory):
    """A tiny base and two distinct fine-tunes of it."""
    base = tiny_factory(seed=0)
    return (
        base,
        tiny_factory(seed=1, like=base, noise=0.1),
        tiny_factory(seed=2, like=base, noise=0.1),
    )


# ------------------------------------------------------------------ homogeneous Mixtral


def test_mixtral_with_one_expert_reproduces_it(trio, tmp_path):
    base, e1, _ = trio
    out = build_mixtral(
        base, {"a": e1}, tmp_path / "mx", router_rows("random", [e1]),
        shared=shared_merge(base, [e1], "linear"), top_k=1, progress=False,
    )  # fmt: skip
    mx = _load(out)
    assert type(mx).__name__ == "MixtralForCausalLM"
    torch.testing.assert_close(_logits(mx, IDS), _logits(_load(e1), IDS), atol=1e-5, rtol=1e-5)
    assert token_routing_share(mx, _tok(), [["ab=", "cd="]]) == [1.0]


def test_mixtral_layout_after_loading(trio, tmp_path):
    """Expert e's w1/w3/w2 land in gate_up_proj[e] / down_proj[e]; shared tensors are the merge."""
    base, e1, e2 = trio
    router = router_rows("random", [e1, e2], seed=5)
    spec = shared_merge(base, [e1, e2], "ties", {"density": 0.5})
    mx = _load(build_mixtral(base, {"a": e1, "b": e2}, tmp_path / "mx", router, shared=spec,
                             top_k=2, progress=False))  # fmt: skip
    dense = [_load(e1).state_dict(), _load(e2).state_dict()]
    state = mx.state_dict()
    for layer in range(2):
        p = f"model.layers.{layer}.mlp"
        torch.testing.assert_close(state[f"{p}.gate.weight"], router[layer])
        for e, sd in enumerate(dense):
            gate_up = torch.cat([sd[f"{p}.gate_proj.weight"], sd[f"{p}.up_proj.weight"]])
            torch.testing.assert_close(state[f"{p}.experts.gate_up_proj"][e], gate_up)
            torch.testing.assert_close(
                state[f"{p}.experts.down_proj"][e], sd[f"{p}.down_proj.weight"]
            )
    name = "model.layers.1.self_attn.q_proj.weight"
    torch.testing.assert_close(state[name], MergeEngine(spec).merged_tensor(name))
    assert not torch.equal(state[name], dense[0][name])


@pytest.mark.parametrize("router", ["random", "hidden_mean"])
def test_identical_experts_equal_the_dense_model(tiny_factory, tmp_path, router):
    base = tiny_factory(seed=0)
    expert = tiny_factory(seed=1, like=base, noise=0.1)
    copies = []
    for i in range(3):
        copies.append(tmp_path / f"copy{i}")
        shutil.copytree(expert, copies[-1])
    tok = _tok()
    prompts = [["ab=", "cd="], ["xy=", "zz="], ["q=", "rst="]]
    rows = router_rows(router, copies, prompts, tok, seed=3)
    if router == "random":
        rows = rows * 100  # sharp, arbitrary routing
    spec = shared_merge(base, copies, "ties", {"density": 1.0})
    ref = _logits(_load(expert), IDS)
    for top_k in (1, 2):
        out = build_mixtral(base, {f"c{i}": p for i, p in enumerate(copies)}, tmp_path / f"mx{top_k}",
                            rows, shared=spec, top_k=top_k, progress=False)  # fmt: skip
        torch.testing.assert_close(_logits(_load(out), IDS), ref, atol=1e-5, rtol=1e-4)


def test_mixtral_rejects_bad_inputs(trio, tiny_factory, tmp_path):
    base, e1, e2 = trio
    with pytest.raises(MergeError, match="router has shape"):
        build_mixtral(
            base, {"a": e1, "b": e2}, tmp_path / "x", torch.zeros(2, 3, 32), progress=False
        )
    with pytest.raises(MergeError, match="top_k"):
        build_mixtral(
            base, {"a": e1}, tmp_path / "y", torch.zeros(2, 1, 32), top_k=2, progress=False
        )
    gpt2 = tiny_factory("gpt2")
    with pytest.raises(MergeError, match="gpt2"):
        build_mixtral(gpt2, {"a": gpt2}, tmp_path / "z", torch.zeros(2, 1, 32), progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_router_rows_shapes_and_seeding(trio):
    _, e1, e2 = trio
    tok = _tok()
    prompts = [["add 1+2=", "add 3+4="], ["rev abc=", "rev xyz="]]
    for method in ("hidden_mean", "hidden_last", "embedding"):
        rows = router_rows(method, [e1, e2], prompts, tok)
        assert rows.shape == (2, 2, 32)
        torch.testing.assert_close(rows.sum(dim=1), torch.zeros(2, 32), atol=1e-5, rtol=0)
    assert not torch.allclose(router_rows("hidden_mean", [e1, e2], prompts, tok),
                              router_rows("hidden_last", [e1, e2], prompts, tok))  # fmt: skip
    assert torch.equal(
        router_rows("random", [e1, e2], seed=1), router_rows("random", [e1, e2], seed=1)
    )
    assert not torch.equal(
        router_rows("random", [e1, e2], seed=1), router_rows("random", [e1, e2], seed=2)
    )


# ------------------------------------------------------------------ perplexity routing


@pytest.mark.parametrize("attention", ["separate", "merged"])
def test_ppl_module_is_causal_generates_and_round_trips(trio, tmp_path, attention):
    base, e1, e2 = trio
    experts = {"a": e1, "b": e2}
    for top_k in (1, 2):
        if attention == "separate":
            moe = ppl_moe_separate(experts, top_k=top_k)
        else:
            moe = ppl_moe_merged(base, experts, top_k=top_k,
                                 shared=shared_merge(base, [e1, e2], "ties", {"density": 0.5}))  # fmt: skip
        mask = torch.ones_like(IDS)
        mask[1, 8:] = 0
        with torch.no_grad():
            full = moe(input_ids=IDS, attention_mask=mask)
            prefix = moe(input_ids=IDS[:, :6], attention_mask=mask[:, :6])
            torch.testing.assert_close(prefix.logits, full.logits[:, :6])
            torch.testing.assert_close(full.routing.sum(-1), torch.ones(3, 11))
            assert int((full.routing > 0).sum(-1).max()) == top_k
            gen = moe.generate(IDS[:1, :5], max_new_tokens=4)
            assert torch.equal(moe(input_ids=gen).logits[0, 4:-1].argmax(-1), gen[0, 5:])
        moe.save(tmp_path / f"{attention}{top_k}")
        again = PplRoutedMoE.load(tmp_path / f"{attention}{top_k}")
        with torch.no_grad():
            torch.testing.assert_close(
                again(input_ids=IDS, attention_mask=mask).logits, full.logits
            )
    with pytest.raises(CheckpointError, match="expected 'hetero'"):
        HeteroMoE.load(tmp_path / f"{attention}1")


def test_ppl_routing_over_identical_experts_is_the_dense_model(tiny_factory, tmp_path):
    base = tiny_factory(seed=0)
    expert = tiny_factory(seed=1, like=base, noise=0.1)
    copies = {}
    for i in range(3):
        copies[f"c{i}"] = shutil.copytree(expert, tmp_path / f"copy{i}")
    ref = torch.log_softmax(_logits(_load(expert), IDS), -1)
    spec = shared_merge(base, list(copies.values()), "ties", {"density": 1.0})
    for top_k in (1, 2):
        for moe in (ppl_moe_separate(copies, top_k=top_k),
                    ppl_moe_merged(base, copies, shared=spec, top_k=top_k)):  # fmt: skip
            with torch.no_grad():
                got = torch.log_softmax(moe(input_ids=IDS).logits, -1)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_separate_attention_mixes_the_experts_probabilities_by_their_weights(trio):
    """log sum_k w_k p_k from each expert's own logits, for top-1 (bit for bit the routed
    expert's log-softmax) and top-2 (a real mixture)."""
    _, e1, e2 = trio
    own = [torch.log_softmax(_logits(_load(e), IDS), -1) for e in (e1, e2)]
    for top_k in (1, 2):
        moe = ppl_moe_separate({"a": e1, "b": e2}, top_k=top_k)
        with torch.no_grad():
            out = moe(input_ids=IDS)
        w = out.routing
        mixed = torch.log(w[..., 0, None] * own[0].exp() + w[..., 1, None] * own[1].exp())
        torch.testing.assert_close(out.logits, mixed, atol=1e-5, rtol=1e-5)
        if top_k == 1:
            pick = w[..., 1:2].bool()
            assert torch.equal(out.logits, torch.where(pick, own[1], own[0]))
        else:
            assert bool(((w > 0) & (w < 1)).any())  # some positions really mix


def test_ppl_routing_with_one_expert_is_that_expert(trio):
    _, e1, e2 = trio
    moe = ppl_moe_separate({"a": e1})
    with torch.no_grad():
        got = torch.log_softmax(moe(input_ids=IDS).logits, -1)
        torch.testing.assert_close(got, torch.log_softmax(_logits(_load(e1), IDS), -1))
        forced = ForcedExpert(ppl_moe_separate({"a": e1, "b": e2}), 1)(input_ids=IDS)
        torch.testing.assert_close(forced.logits, _logits(_load(e2), IDS))
        assert forced.routing[..., 1].eq(1).all() and forced.routing[..., 0].eq(0).all()
    with pytest.raises(MergeError, match="expert index 2"):
        ForcedExpert(moe, 2)


def test_ppl_routing_picks_the_task_expert_on_a_whole_text_tiny_zoo(tiny_zoo, tmp_path):
    """A zoo trained with the loss on the whole text (``loss_on="text"``, prompt included, as
    MergeME's experts are trained): 1/PPL of a test prompt sends it to the expert of its task
    (separate attention: each expert scores with its own). The answer-only zoo's experts never
    learn prompts, so their perplexity routes worse (on this machine every prompt to one expert)."""
    from transformers import AutoTokenizer

    from merge_env.pools.zoo import ZooConfig, build_zoo

    text = build_zoo(dataclasses.replace(ZooConfig.preset("tiny"), loss_on="text"), tmp_path,
                     progress=False)  # fmt: skip
    assert text.config.loss_on == "text" and text.root != tiny_zoo.root
    right = {}
    for zoo in (text, tiny_zoo):
        tok = AutoTokenizer.from_pretrained(zoo.tokenizer_dir)
        prompts = {t.name: [ex.prompt for ex in t.test[:32]] for t in zoo.tasks}
        confusion = routing_confusion(ppl_moe_separate(zoo.experts), tok, prompts)
        assert set(confusion) == set(zoo.experts), confusion
        right[zoo.config.loss_on] = {t: c[t] / sum(c.values()) for t, c in confusion.items()}
    assert min(right["text"].values()) >= 0.9, right
    assert sum(right["answer"].values()) < sum(right["text"].values()), right


# ------------------------------------------------------------------ heterogeneous experts


@pytest.fixture
def hetero_experts(tiny_factory):
    """Two fine-tunes of one base and an 'odd' expert of another width and depth (vocab 40)."""
    base = tiny_factory(seed=0, vocab=40)
    return {
        "a": tiny_factory(seed=1, like=base, noise=0.1),
        "b": tiny_factory(seed=2, like=base, noise=0.1),
        "odd": tiny_factory(seed=3, vocab=40, hidden=48, layers=3),
    }


def test_hetero_shapes_and_exact_start(hetero_experts):
    assert check_hetero_shapes(hetero_experts) == {
        "a": (40, 32, 2),
        "b": (40, 32, 2),
        "odd": (40, 48, 3),
    }
    moe = build_hetero(hetero_experts, init="lstsq")
    assert moe.embed.weight.shape == (40, 48) and moe.proj_in[0].weight.shape == (32, 48)
    ids = IDS.clamp(max=39)  # exact when vocab (40) <= the shared width (48)
    with torch.no_grad():
        for k, path in enumerate(hetero_experts.values()):  # forced routing = that expert alone
            moe.router.bias.zero_()
            moe.router.bias[k] = 50.0
            torch.testing.assert_close(moe(input_ids=ids).logits, _logits(_load(path), ids),
                                       atol=1e-3, rtol=1e-3)  # fmt: skip


def test_hetero_rejects_a_bad_pair(hetero_experts, tiny_factory, tmp_path):
    other = tiny_factory(seed=4, vocab=64, hidden=48)
    with pytest.raises(MergeError, match="different vocabularies.*64"):
        check_hetero_shapes({"a": hetero_experts["a"], "other": other})
    with pytest.raises(MergeError, match="at least two"):
        build_hetero({"a": hetero_experts["a"]})
    for name, alphabet in (
        ("x", "abcdefghijklmnopqrstuvwxyz"),
        ("y", "zyxwvutsrqponmlkjihgfedcba"),
    ):
        tok = char_tokenizer(alphabet)
        shutil.copytree(hetero_experts["a"], tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    with pytest.raises(MergeError, match="different tokenizers"):
        check_hetero_shapes({"x": tmp_path / "x", "y": tmp_path / "y"})


def test_hetero_training_is_seeded_and_round_trips(hetero_experts, tmp_path):
    tok = _tok()
    examples = [Example(f"ab{c}=", c * 2) for c in "abcdefgh"] + [
        Example(f"{d}+1=", d) for d in "1234"
    ]
    runs = []
    for _ in range(2):
        moe = build_hetero(hetero_experts)
        runs.append(
            (moe, train_hetero(moe, examples, tok, steps=6, batch_size=8, seed=3, progress=False))
        )
    assert runs[0][1] == runs[1][1]
    assert runs[0][1][-1] < runs[0][1][0]
    moe = runs[0][0]
    ids, mask = pad_right(encode_prompts(tok, ["abc=", "1+1=", "ab="]), tok.pad_token_id)
    moe.save(tmp_path / "het", tokenizer_dir=None)
    again = HeteroMoE.load(tmp_path / "het")
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids, attention_mask=mask).logits,
                                   moe(input_ids=ids, attention_mask=mask).logits)  # fmt: skip
        assert again.route(ids, mask).shape == (3, 3)


def test_hetero_training_follows_each_examples_eos(hetero_experts):
    """Examples of a task without an end token (``Task.eos=False``) are trained without it: the
    per-example flags change the loss from the first step, one flag for all equals the same flag
    per example, and a count of flags that does not match is refused."""
    tok = _tok()
    examples = [Example(f"ab{c}=", c * 2) for c in "abcdefgh"]

    def losses(eos):
        moe = build_hetero(hetero_experts)
        return train_hetero(moe, examples, tok, steps=2, batch_size=4, seed=5, progress=False,
                            eos=eos)  # fmt: skip

    assert losses(False) == losses([False] * len(examples))
    assert losses(True)[0] != losses(False)[0]
    mixed = losses([True, False] * 4)  # each example its own flag, not the first one for all
    assert mixed[0] not in (losses(True)[0], losses(False)[0])
    with pytest.raises(ConfigError, match="3 eos flags for 8 training examples"):
        losses([True, False, True])


def test_hetero_training_can_freeze_projections(hetero_experts):
    tok = _tok()
    examples = [Example(f"ab{c}=", c * 2) for c in "abcdefgh"]
    moe = build_hetero(hetero_experts)
    before = [p.detach().clone() for p in moe.proj_in.parameters()]
    router = moe.router.weight.detach().clone()
    train_hetero(moe, examples, tok, steps=3, batch_size=4, proj_lr=0.0, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, moe.proj_in.parameters()))
    assert not torch.equal(router, moe.router.weight)
    with pytest.raises(ConfigError, match="router_loss"):
        train_hetero(moe, examples, tok, steps=1, router_loss=0.0, progress=False)


# ------------------------------------------------------------------ the experiment


def test_experiment_runs_on_the_tiny_zoo(tiny_zoo, tmp_path, monkeypatch):
    """``python -m experiments.moe pool=tiny`` end to end (few examples, short training)."""
    import json
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from experiments.moe import run

    conf = Path(__file__).resolve().parents[2] / "conf"
    monkeypatch.chdir(tmp_path)  # the run folder is outputs/moe outside a Hydra run
    overrides = [
        "pool=tiny", f"pool.cache_dir={tiny_zoo.root.parent}", "max_examples=6",
        "router_prompts=4", "routers=[hidden_mean,random]", "hetero.steps=3",
        "hetero.batch_size=4", "hetero.train_examples=4",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        best = run(compose("moe", overrides=overrides))
    out = json.loads((tmp_path / "outputs/moe/moe_results.json").read_text())
    names = [t.name for t in tiny_zoo.tasks]
    assert out["tasks"] == names and out["split"] == "test"
    expected = ["base", "dense ties", "mixtral (dare, hidden_mean)", "mixtral (ties, random)",
                "ppl separate-attn", "ppl merged-attn (ties)", "oracle route, merged-attn (ties)",
                f"hetero ({tiny_zoo.odd_expert_task}=odd, lstsq)"]  # fmt: skip
    assert set(expected) <= set(out["scores"]), sorted(out["scores"])
    assert all(s[n]["n"] == 6 for s in out["scores"].values() for n in names)
    for conf_m in out["confusion"].values():
        assert sorted(conf_m) == sorted(names)
        assert all(sum(c.values()) == 6 for c in conf_m.values())
    assert {o["claim"] for o in out["ordering"]} >= {
        "ppl separate-attn > ppl merged-attn (ties), dense ties"
    }
    # every row keeps its per-example results, which give the scores and the claims' intervals
    from merge_env.scoring.evaluate import ExampleScore, aggregate

    for row, per in out["examples"].items():
        for n in names:
            ex = [ExampleScore(t == c, int(t), int(c), ll) for t, c, ll in per[n]]
            assert vars(aggregate(ex)) == out["scores"][row][n]
    for o in out["ordering"]:
        assert len(o["intervals"]) == len(o["values"]) - 1
        assert o["significant"] == all(lo > 0 for lo, _ in o["intervals"])
        assert all(lo <= hi for lo, hi in o["intervals"])
    moe_rows = [r for r in out["scores"] if r.startswith(("mixtral", "ppl", "hetero"))]
    assert best == max(out["macro"][r]["exact_match"] for r in moe_rows)
    table = (tmp_path / "outputs/moe/moe_table.md").read_text()
    assert "| ppl separate-attn |" in table and "prompts per (task, chosen expert)" in table
    assert not (tmp_path / "outputs/moe/moe_models").exists()  # checkpoints removed


def test_the_returned_macro_is_the_tasks_shared_headline_metric():
    """``run`` returns the best MoE's macro of the tasks' one headline metric; on a pool whose
    tasks mix metrics, of token accuracy (a macro of exact match and log-likelihood would mix
    scales), whatever the tasks' order."""
    from types import SimpleNamespace

    from experiments.moe import _headline

    def bench(*metrics):
        return SimpleNamespace(metric={f"t{i}": m for i, m in enumerate(metrics)})

    assert _headline(bench("exact_match", "exact_match")) == "exact_match"
    assert _headline(bench("loglik", "loglik")) == "loglik"
    assert _headline(bench("loglik", "exact_match")) == "token_accuracy"
    assert _headline(bench("exact_match", "loglik")) == "token_accuracy"


def test_a_claim_holds_only_where_the_first_row_beats_each_other():
    from experiments.moe import claim_holds

    assert claim_holds([0.6, 0.5, 0.55])  # beats both; how the other two compare is not claimed
    assert not claim_holds([0.6, 0.6, 0.5])  # a tie is not a win
    assert not claim_holds([0.5, 0.4, 0.7])
