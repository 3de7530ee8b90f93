"""Prefix-shared scoring (scoring/prefix.py) gives bit-identical scores and really shares."""

from __future__ import annotations

import pytest
import torch

from merge_env.scoring.evaluate import Evaluator
from merge_env.scoring.prefix import PrefixCache, PrefixRun
from merge_env.scoring.tasks.synthetic import char_tokenizer, make_task
from merge_env.search.assemble import ModelPool
from merge_env.search.recipe import BASE, MERGED, Recipe, Slot, param_merge, uniform_merge


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def tasks():
    return [make_task(kind, 10, 0, seed=0) for kind in ("add", "reverse", "cipher")]


@pytest.fixture(params=["llama", "gpt2"])
def pool(request, tiny_factory, tok):
    family = request.param
    base = tiny_factory(family, layers=4, vocab=len(tok), seed=0)
    a = tiny_factory(family, like=base, seed=1, noise=0.05)
    b = tiny_factory(family, like=base, seed=2, noise=0.05)
    return ModelPool({BASE: base, "a": a, "b": b})


def _recipes() -> list[Recipe]:
    """Shared prefixes, repeated layers, residual scales, two merges, depths 1 to 7."""
    ties = param_merge("ties", {"a": 0.6, "b": 0.4}, density=0.5)
    linear = uniform_merge("linear", ["a", "b"])
    ident = tuple(Slot(MERGED, t) for t in range(4))
    stem = (Slot(MERGED, 0), Slot("a", 1, 1.25), Slot("a", 1, 0.5))
    return [
        Recipe(),  # the base itself
        Recipe.single("a"),
        Recipe(merge=ties),  # identity path, spelled out by path_model
        Recipe(merge=ties, path=ident),  # the same path written out: same keys as the one above
        Recipe(merge=ties, path=stem + (Slot("b", 2), Slot(MERGED, 3))),
        Recipe(merge=ties, path=stem + (Slot("b", 2), Slot(MERGED, 3, 0.75), Slot(MERGED, 3))),
        Recipe(merge=ties, path=stem + (Slot(BASE, 0, 0.75),)),
        Recipe(merge=ties, path=stem[:2]),
        Recipe(merge=ties, path=(Slot(MERGED, 0),)),
        Recipe(merge=ties, path=ident[:2] + (Slot(MERGED, 1), Slot(MERGED, 1), *ident[2:])),
        Recipe(merge=ties, path=ident[:2] + (Slot(MERGED, 2, 1.25), Slot(MERGED, 3))),
        Recipe(merge=linear, path=stem + (Slot("b", 2), Slot(MERGED, 3))),  # same path, new merge
        Recipe(merge=linear, path=stem),
        Recipe(path=(Slot(BASE, 0), Slot("a", 1), Slot("a", 1, 0.5), Slot("b", 3))),
        Recipe(path=(Slot(BASE, 0), Slot("a", 1), Slot("b", 2))),
    ]


def _alone(pool: ModelPool, ev: Evaluator, recipes: list[Recipe], tasks) -> list[dict]:
    """Today's scores: each recipe assembled and scored by itself."""
    return [ev.score_tasks(pool.assemble(r), tasks) for r in recipes]


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_shared_scores_are_bit_identical(pool, tok, tasks, dtype):
    recipes = _recipes()
    off = Evaluator(tok, batch_size=8, dtype=dtype, prefix_cache_bytes=0)
    on = Evaluator(tok, batch_size=8, dtype=dtype)
    expected = _alone(pool, off, recipes, tasks)
    assert pool.score_recipes(recipes, off, tasks) == expected
    got = pool.score_recipes(recipes, on, tasks)
    for recipe, want, have in zip(recipes, expected, got):
        for name in want:
            # dataclass equality compares the floats exactly: bit for bit
            assert have[name] == want[name], (recipe.to_dict(), name, have[name], want[name])
    stats = on.prefix_cache.stats
    assert stats.slots_reused > 0, "prefix sharing silently off"
    assert stats.lru_hits == 0  # nothing was kept before this call
    # a second call on the same batches starts from states the first one kept
    before = stats.slots_run
    assert pool.score_recipes(recipes[::-1], on, tasks) == expected[::-1]
    assert stats.lru_hits > 0
    assert stats.slots_run - before < before


def test_every_distinct_prefix_runs_once_per_batch(pool, tok, tasks):
    recipes = _recipes()
    ev = Evaluator(tok, batch_size=1000)  # one example batch
    ties = [r for r in recipes if r.merge is not None and "ties" in r.canonical_json()]
    paths = [pool.path_model(r) for r in ties]
    distinct = len({k for p in paths for k in p.keys})
    ev.score_paths(paths, tasks)
    assert ev.prefix_cache.stats.slots_run == distinct
    assert ev.prefix_cache.stats.slots_reused == sum(len(p.keys) for p in paths) - distinct


def test_scores_stay_exact_when_the_lru_evicts(pool, tok, tasks):
    recipes = _recipes()
    expected = _alone(pool, Evaluator(tok, batch_size=8, prefix_cache_bytes=0), recipes, tasks)
    tight = 3 * 8 * 16 * 32 * 4  # about three prefix states of one batch
    ev = Evaluator(tok, batch_size=8, prefix_cache_bytes=tight)
    for _ in range(2):
        assert pool.score_recipes(recipes, ev, tasks) == expected
        assert ev.prefix_cache.bytes <= tight
    assert ev.prefix_cache.stats.evictions > 0
    assert ev.prefix_cache.stats.slots_reused > 0  # within a batch sharing needs no LRU room


def test_capped_evaluator_shares_the_prefix_cache(tok):
    ev = Evaluator(tok, prefix_cache_bytes=1 << 20)
    assert ev.capped(4).prefix_cache is ev.prefix_cache
    assert Evaluator(tok, prefix_cache_bytes=0).prefix_cache is None


def test_lru_respects_its_byte_bound():
    state = torch.zeros(4, 8)  # 128 bytes
    cache = PrefixCache(3 * 128 + 10)
    for i in range(5):
        cache.put(("batch", i), state.clone())
        assert cache.bytes <= cache.max_bytes
    assert len(cache) == 3 and cache.stats.evictions == 2
    assert ("batch", 0) not in cache and ("batch", 4) in cache
    assert cache.get(("batch", 2)) is not None  # now the most recent
    cache.put(("batch", 5), (state.clone(), None))  # tuple outputs count their tensors
    assert ("batch", 2) in cache and ("batch", 3) not in cache
    cache.put(("batch", 6), torch.zeros(100, 100))  # larger than the bound: not kept
    assert ("batch", 6) not in cache and cache.bytes == 3 * 128
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0
    off = PrefixCache(0)
    off.put(("batch", 0), state)
    assert len(off) == 0


def test_a_shell_source_is_part_of_the_prefix(pool, tok, tasks):
    """Same slots, other embeddings: a recipe whose shell is another source shares nothing."""
    path = (Slot(BASE, 0), Slot("a", 1, 1.25), Slot(BASE, 1))
    recipes = [Recipe(path=path), Recipe(path=path, shell="a"), Recipe(path=path[:2], shell="b")]
    expected = _alone(pool, Evaluator(tok, batch_size=8, prefix_cache_bytes=0), recipes, tasks)
    assert expected[0] != expected[1]
    assert pool.score_recipes(recipes, Evaluator(tok, batch_size=8), tasks) == expected


def test_only_branch_points_are_pinned(pool, tok, tasks):
    """Five candidates on one 3-slot stem: one state pinned (the stem's), not one per depth,
    and every distinct prefix still runs once with no LRU to fall back on."""
    ties = param_merge("ties", {"a": 0.6, "b": 0.4}, density=0.5)
    stem = (Slot(MERGED, 0), Slot(MERGED, 1, 1.25), Slot(MERGED, 2), Slot(MERGED, 3))
    recipes = [Recipe(merge=ties, path=stem[:3] + (Slot("a", t),)) for t in range(4)]
    paths = [pool.path_model(r) for r in [*recipes, Recipe(merge=ties, path=stem)]]
    inputs, mask = Evaluator(tok, batch_size=1000).padded_batches(tasks)[0]
    cache = PrefixCache(0)
    run, peak = PrefixRun(paths, cache, "batch"), 0
    with torch.inference_mode():
        for i in run.trie_order(paths):
            run.model_for(paths[i])(input_ids=inputs, attention_mask=mask, use_cache=False)
            run.finish()
            peak = max(peak, run.pinned)
    assert peak == 1 and run.pinned == 0
    assert (cache.stats.slots_run, cache.stats.slots_reused) == (3 + 5, 3 * 4)


# ------------------------------------------------------------ prompt-prefix sharing


def _instructed(tasks, instruction: str = "Answer the question: "):
    """The tasks with an instruction before every prompt, as a chat template's system turn."""
    from merge_env.scoring.tasks.task import Example, Task

    def lead(examples):
        return tuple(Example(instruction + ex.prompt, ex.answer) for ex in examples)

    return [Task(t.name, lead(t.search), lead(t.test)) for t in tasks]


@pytest.fixture(scope="module")
def instructed(tasks):
    return _instructed(tasks)


@pytest.mark.parametrize("batch_size", [8, 1000])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_prompt_prefix_sharing_matches_unshared(pool, tok, instructed, dtype, batch_size):
    recipes = _recipes()
    plain = Evaluator(tok, batch_size=batch_size, dtype=dtype, prefix_cache_bytes=0,
                      prompt_prefix=False)  # fmt: skip
    expected = _alone(pool, plain, recipes, instructed)
    for prefix_bytes in (0, 256 * 2**20):  # alone, and under path-prefix sharing
        ev = Evaluator(tok, batch_size=batch_size, dtype=dtype, prefix_cache_bytes=prefix_bytes)
        calls: list[int] = []

        def spy(*a, _real=ev._prompt_state, _calls=calls, **k):
            _calls.append(a[-1])  # the shared length
            return _real(*a, **k)

        ev._prompt_state = spy
        got = (_alone(pool, ev, recipes, instructed) if prefix_bytes == 0
               else pool.score_recipes(recipes, ev, instructed))  # fmt: skip
        for recipe, want, have in zip(recipes, expected, got):
            for name in want:
                w, h, where = want[name], have[name], (recipe.to_dict(), name, prefix_bytes)
                # the decisions exactly; the mean loglik bit for bit on most CPUs, but CPU kernels
                # pick their blocking by shape and on some (an AMD EPYC) the shared pass's
                # float32 sums round differently (about 2e-8 in the cases seen there)
                assert (h.exact_match, h.token_accuracy, h.n) == (
                    w.exact_match, w.token_accuracy, w.n), where  # fmt: skip
                assert h.loglik == pytest.approx(w.loglik, rel=0, abs=1e-6), where
        if pool.arch.family.name == "llama":
            # <s> and the instruction (and a task's own word): run once per candidate and batch
            assert calls and min(calls) == 1 + len("Answer the question: ")
        else:  # GPT-2 is scored through its own forward: nothing shared, nothing changed
            assert not calls


def test_prompt_prefix_ignores_what_is_not_shared(tok, tasks):
    ev = Evaluator(tok)
    mixed = ev.encode([t.search[0] for t in tasks])
    assert ev.shared_prompt(mixed) == 0  # '<s>' alone: under the minimum
    adds = ev.encode(tasks[0].search)
    assert ev.shared_prompt(adds) == 1 + len("add ")  # the zoo's own task words are shared
    # a pass after the prefix of a few token rows (4 x 7 here) would round differently
    assert ev.shared_prompt(adds[:4]) == 0
    led = ev.encode(_instructed(tasks)[0].search)
    assert ev.shared_prompt(led) == 1 + len("Answer the question: add ")
    assert ev.shared_prompt(led[:1]) == 0  # one row: nothing to share
    assert Evaluator(tok, prompt_prefix=False).shared_prompt(led) == 0
    # never past an answer's first input: a prompt that is another's prefix caps it
    from merge_env.scoring.tasks.task import Example

    short = ev.encode([Example("Answer the q", "x" * 40), Example("Answer the question", "y" * 40)])
    assert ev.shared_prompt(short) == 1 + len("Answer the q") - 1


def test_prompt_prefix_with_rows_of_one_length(tiny_factory, tok):
    """No padding in the batch (the forward drops the mask): not shared, the plain scores."""
    from merge_env.scoring.tasks.task import Example, Task

    base = tiny_factory("llama", layers=3, vocab=len(tok), seed=0)
    pool = ModelPool({BASE: base})
    rows = tuple(Example(f"Answer the question: {a}+{b}=", f"{a + b:02d}")
                 for a in range(5) for b in range(5, 9))  # fmt: skip
    test = (Example("Answer the question: 9+9=", "18"),)
    task = Task("sums", rows, test)
    model = pool.assemble(Recipe())
    want = Evaluator(tok, prompt_prefix=False).score_tasks(model, [task])
    ev = Evaluator(tok)
    assert ev.shared_prompt(ev.encode(rows)) == 0
    assert ev.score_tasks(model, [task]) == want
    # one row longer: padded, so shared: the decisions exactly, the mean loglik to 1e-6 (bit for
    # bit on most CPUs; on an AMD EPYC of session 14 the shared pass rounded 1.5e-8 away, as in
    # test_prompt_prefix_sharing_matches_unshared's note)
    longer = (*rows, Example("Answer the question: 10+10=", "020"))
    task = Task("sums", longer, test)
    assert ev.shared_prompt(ev.encode(longer)) == 1 + len("Answer the question: ")
    w = Evaluator(tok, prompt_prefix=False).score_tasks(model, [task])["sums"]
    h = ev.score_tasks(model, [task])["sums"]
    assert (h.exact_match, h.token_accuracy, h.n) == (w.exact_match, w.token_accuracy, w.n)
    assert h.loglik == pytest.approx(w.loglik, rel=0, abs=1e-6)


def test_prompt_sharing_needs_a_decoder_that_takes_a_cache(tok):
    from merge_env.scoring.evaluate import _cache_kw

    class Takes:
        def forward(self, input_ids, cache=None): ...

    class Older:
        def forward(self, input_ids, past_key_values=None): ...

    class Neither:
        def forward(self, input_ids, **kwargs): ...

    assert _cache_kw(Takes()) == "cache" and _cache_kw(Older()) == "past_key_values"
    assert _cache_kw(Neither()) is None  # its keys would be dropped silently: no sharing
    ev = Evaluator(tok)
    ev.head_on_answers = False
    assert ev.capped(4).head_on_answers is False  # one prefix cache, one kind of state
