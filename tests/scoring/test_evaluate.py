"""Tests for merge_env.evaluate: teacher-forced metrics vs greedy decoding, padding, the cache."""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from merge_env.errors import ConfigError
from merge_env.scoring.cache import EvalCache
from merge_env.scoring.evaluate import Evaluator, TaskScore, aggregate
from merge_env.scoring.tasks.synthetic import char_tokenizer, make_task, training_examples
from merge_env.scoring.tasks.task import Example, Task

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def _llama(tok, seed: int = 0, **overrides) -> LlamaForCausalLM:
    cfg = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    cfg.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def _mixed_task() -> Task:
    """Examples of every zoo kind, so lengths (and so padding) vary inside a batch."""
    parts = [make_task(kind, 8, 4, seed=0) for kind in ("add", "reverse", "cipher")]
    return Task("mixed", sum((t.search for t in parts), ()), sum((t.test for t in parts), ()))


@pytest.fixture(scope="module")
def trained(tok):
    """A tiny Llama trained 140 steps (~2 s) on the cipher: some test answers right, some wrong."""
    model = _llama(tok).train()
    task = make_task("cipher", n_search=16, n_test=32, seed=0)
    enc = Evaluator(tok).encode(training_examples("cipher", 2000, seed=0, exclude=task))
    width = max(len(e.ids) for e in enc)
    ids = torch.full((len(enc), width), tok.pad_token_id)
    labels = torch.full((len(enc), width), -100)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        labels[i, e.n_prompt : len(e.ids)] = torch.tensor(e.ids[e.n_prompt :])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(e.ids) for e in enc])[:, None]).long()
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(140):
        b = torch.randint(0, len(enc), (64,), generator=gen)
        loss = model(input_ids=ids[b], attention_mask=mask[b], labels=labels[b]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), task


# ---------------------------------------------------------------- metrics


def test_exact_match_equals_greedy_decoding(tok, trained):
    model, task = trained
    ev = Evaluator(tok, batch_size=16)
    per_example = ev.example_scores(model, task.test)
    greedy = []
    for ex in task.test:
        prompt = torch.tensor([tok(ex.prompt)["input_ids"]])
        target = tok(ex.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=len(target) + 1,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        new = out[0, prompt.shape[1] :].tolist()
        greedy.append(new[: len(target)] == target)
        if greedy[-1]:
            assert tok.decode(new, skip_special_tokens=True) == ex.answer
    n_right = sum(greedy)
    assert 0 < n_right < len(greedy), "the fixture model should get some answers right, some wrong"
    assert [s.correct for s in per_example] == greedy
    assert ev.score(model, task, "test").exact_match == pytest.approx(n_right / len(greedy))


def test_scores_match_a_direct_computation(tok, trained):
    model, task = trained
    examples = task.test[:5]
    scores = Evaluator(tok).example_scores(model, examples)
    for ex, s in zip(examples, scores):
        prompt = tok(ex.prompt)["input_ids"]
        ids = prompt + tok(ex.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        pos = range(len(prompt) - 1, len(ids) - 1)
        assert s.n_tokens == len(ex.answer) + 1
        assert s.loglik == pytest.approx(sum(logp[t, ids[t + 1]].item() for t in pos), abs=1e-4)
        assert s.n_correct == sum(int(logp[t].argmax() == ids[t + 1]) for t in pos)
    total = Evaluator(tok).score(model, Task("five", examples, ()))
    assert total.n == 5
    assert total.token_accuracy == pytest.approx(
        sum(s.n_correct for s in scores) / sum(s.n_tokens for s in scores)
    )
    assert total.loglik == pytest.approx(
        sum(s.loglik for s in scores) / sum(s.n_tokens for s in scores)
    )
    assert total.get("loglik") == total.loglik
    with pytest.raises(ConfigError, match="unknown metric 'f1'"):
        total.get("f1")


def test_example_scores_without_eos_score_the_answer_alone(tok, trained):
    """``eos=False`` drops the end token from each example's scored tokens: one token fewer, and
    the log-likelihood of the answer tokens only (the with-EOS sum minus the EOS term)."""
    model, task = trained
    examples = task.test[:4]
    ev = Evaluator(tok)
    with_eos, without = (
        ev.example_scores(model, examples),
        ev.example_scores(model, examples, False),
    )
    for ex, a, b in zip(examples, with_eos, without):
        prompt = tok(ex.prompt)["input_ids"]
        ids = prompt + tok(ex.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        eos_term = logp[len(ids) - 2, tok.eos_token_id].item()
        assert (b.n_tokens, a.n_tokens) == (len(ex.answer), len(ex.answer) + 1)
        assert b.loglik == pytest.approx(a.loglik - eos_term, abs=1e-4)
    assert ev.example_scores(model, examples, eos=False) == without  # no cache, same results


def test_a_padded_batch_scores_each_example_as_alone(tok):
    model = _llama(tok, seed=1)
    examples = _mixed_task().search
    assert len({len(ex.prompt) + len(ex.answer) for ex in examples}) > 3  # real padding
    together = Evaluator(tok, batch_size=64).example_scores(model, examples)
    alone = Evaluator(tok, batch_size=1).example_scores(model, examples)
    for a, b in zip(together, alone):
        assert (a.correct, a.n_tokens, a.n_correct) == (b.correct, b.n_tokens, b.n_correct)
        assert a.loglik == pytest.approx(b.loglik, abs=1e-4)


def test_score_tasks_equals_scoring_one_by_one(tok):
    model = _llama(tok)
    tasks = [make_task(kind, 10, 0, seed=2) for kind in ("add", "reverse", "cipher")]
    ev = Evaluator(tok, batch_size=8)
    together = ev.score_tasks(model, tasks)
    assert ev.forward_calls == 4  # 30 examples swept together in batches of 8
    assert list(together) == ["add", "reverse", "cipher"]
    for t in tasks:
        one = Evaluator(tok).score(model, t)
        assert together[t.name].exact_match == one.exact_match
        assert together[t.name].loglik == pytest.approx(one.loglik, abs=1e-5)
    with pytest.raises(ConfigError, match="task names repeat"):
        ev.score_tasks(model, [tasks[0], tasks[0]])


def test_task_examples_are_the_per_example_results_of_score_tasks(tok, trained):
    model, task = trained
    tasks = [task, make_task("add", 6, 5, seed=1)]
    ev = Evaluator(tok, batch_size=8)
    per = ev.task_examples(model, tasks, "test")
    scores = ev.score_tasks(model, tasks, "test")
    assert list(per) == ["cipher", "add"] and [len(v) for v in per.values()] == [32, 5]
    for name, results in per.items():
        # bit for bit: the same sweep, the same mean
        assert float(np.mean([r.correct for r in results])) == scores[name].exact_match
        assert sum(r.n_tokens for r in results) > 0
        assert aggregate(results) == scores[name]  # every field, bit for bit
    assert 0 < scores["cipher"].exact_match < 1  # some right, some wrong: a real check
    assert ev.task_examples(model, []) == {}
    with pytest.raises(ConfigError, match="task 'none': split 'test' has no examples"):
        ev.task_examples(model, [Task("none", (), ())], "test")  # as score_tasks says
    with pytest.raises(ConfigError, match="task names repeat"):
        ev.task_examples(model, [task, task])


def test_training_mode_is_restored_and_ignored(tok):
    model = _llama(tok, attention_dropout=0.5).train()
    task = make_task("add", 12, 0, seed=0)
    first = Evaluator(tok).score(model, task)
    assert model.training
    assert Evaluator(tok).score(model, task) == first  # no dropout while scoring


def test_plain_module_returning_a_tensor_and_max_examples(tok):
    class Bigram(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(len(tok), len(tok))

        def forward(self, input_ids, attention_mask):
            return self.emb(input_ids)

    task = make_task("reverse", 10, 0, seed=0)
    ev = Evaluator(tok, batch_size=4, max_examples=6)
    score = ev.score(Bigram(), task)
    assert (score.n, ev.forward_calls) == (6, 2)


def test_prompt_answer_boundary_falls_back_when_a_merge_crosses_it(caplog):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "x": 2, "a": 3, "b": 4, "ab": 5}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    bpe = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>")
    ev = Evaluator(bpe)
    with caplog.at_level(logging.WARNING, logger="merge_env.scoring.evaluate"):
        plain, crossing = ev.encode([Example("x", "ab"), Example("xa", "b")])
    assert (plain.ids, plain.n_prompt) == ((2, 5, 1), 1)  # the joint tail: "ab" as one token
    assert (crossing.ids, crossing.n_prompt) == ((2, 3, 4, 1), 2)  # prompt kept as generate sees it
    assert "crosses the prompt/answer boundary" in caplog.text


def test_unknown_characters_stay_in_the_prompt(tok):
    (enc,) = Evaluator(tok).encode([Example("ab\u00e9", "x")])
    assert enc.ids == (
        tok.bos_token_id,
        *tok("ab", add_special_tokens=False)["input_ids"],
        tok.unk_token_id,
        tok.convert_tokens_to_ids("x"),
        tok.eos_token_id,
    )
    assert enc.n_prompt == 4


def test_evaluator_argument_errors(tok):
    model = _llama(tok)
    task = make_task("add", 4, 0, seed=0)
    with pytest.raises(ConfigError, match="split 'test' has no examples"):
        Evaluator(tok).score(model, task, "test")
    with pytest.raises(ConfigError, match="model is on cpu"):
        Evaluator(tok, device="meta").score(model, task)
    with pytest.raises(ConfigError, match="batch_size"):
        Evaluator(tok, batch_size=0)


def test_autocast_dtype_runs_and_is_part_of_the_key(tok):
    model = _llama(tok)
    task = make_task("add", 8, 0, seed=0)
    bf16 = Evaluator(tok, dtype=torch.bfloat16)
    score = bf16.score(model, task)
    assert score.n == 8 and score.loglik == pytest.approx(
        Evaluator(tok).score(model, task).loglik, abs=0.1
    )
    assert bf16.cache_key("m", task, "search") != Evaluator(tok).cache_key("m", task, "search")


# ---------------------------------------------------------------- cache


def test_cache_hit_does_no_forward_pass(tok, tmp_path):
    model = _llama(tok)
    task = make_task("reverse", 20, 5, seed=0)
    ev = Evaluator(tok, batch_size=8, cache=EvalCache(tmp_path / "c.sqlite"))
    first = ev.score(model, task, model_key="m0")
    assert ev.forward_calls == 3
    reopened = Evaluator(tok, batch_size=8, cache=EvalCache(tmp_path / "c.sqlite"))
    assert reopened.score(model, task, model_key="m0") == first
    assert reopened.forward_calls == 0
    reopened.score(model, task, model_key="m1")  # another model: a miss
    reopened.score(model, task)  # no key: never cached
    assert reopened.forward_calls == 6
    assert len(reopened.cache) == 2


def test_cache_key_changes_with_what_changes_the_score(tok):
    task = make_task("add", 20, 10, seed=0)
    ev = Evaluator(tok)
    key = ev.cache_key("m", task, "search")
    assert key == Evaluator(tok, batch_size=3).cache_key("m", task, "search")
    others = {
        ev.cache_key("m", task, "test"),
        ev.cache_key("m2", task, "search"),
        Evaluator(tok, max_examples=5).cache_key("m", task, "search"),
        ev.cache_key("m", make_task("add", 20, 10, seed=1), "search"),
        ev.cache_key("m", Task("add", task.search, task.test, metric="loglik"), "search"),
        Evaluator(char_tokenizer("0123456789+= abcdefghijklmnopqrstuvwxyz")).cache_key(
            "m", task, "search"
        ),
    }
    assert len(others) == 6 and key not in others
    with pytest.raises(ConfigError, match="unknown split"):
        ev.cache_key("m", task, "dev")


def test_cache_round_trips_nan_and_pickles(tmp_path):
    import pickle

    cache = EvalCache(tmp_path / "sub" / "c.sqlite")
    cache.put("broken", TaskScore(0.0, 0.0, float("nan"), 3))
    cache.put("fine", TaskScore(0.5, 0.75, -1.25, 4))
    cache.put("fine", TaskScore(0.5, 0.75, -1.5, 4))  # a rewrite replaces
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.get("fine") == TaskScore(0.5, 0.75, -1.5, 4)
    assert math.isnan(clone.get("broken").loglik)
    assert clone.get("absent") is None and len(clone) == 2


_WRITER = """
import sys
from merge_env.scoring.cache import EvalCache
from merge_env.scoring.evaluate import TaskScore
cache, limit, i = EvalCache(sys.argv[1]), int(sys.argv[2]), 0
while limit < 0 or i < limit:
    cache.put(f"k{i}", TaskScore(i / 1e4, 0.5, -float(i), i))
    print(i, flush=True)
    i += 1
print("done", flush=True)
sys.stdin.read()
"""


def _writer(db: Path, limit: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db), str(limit)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _assert_rows_intact(cache: EvalCache, upto: int) -> None:
    for i in range(upto):
        assert cache.get(f"k{i}") == TaskScore(i / 1e4, 0.5, -float(i), i)
    assert cache._conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_writer_killed_mid_stream_loses_nothing_acknowledged(tmp_path):
    db = tmp_path / "c.sqlite"
    proc = _writer(db, limit=-1)  # writes until killed
    acknowledged = -1
    for line in proc.stdout:
        acknowledged = int(line)
        if acknowledged >= 60:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    cache = EvalCache(db)
    assert len(cache) >= acknowledged + 1
    _assert_rows_intact(cache, len(cache))  # the rows written are whole, none half-written


def test_truncated_wal_loses_only_the_last_score(tmp_path):
    db = tmp_path / "c.sqlite"
    proc = _writer(db, limit=40)
    for line in proc.stdout:
        if line.strip() == "done":
            break
    proc.send_signal(signal.SIGKILL)  # no clean close: the scores live in the WAL file
    proc.wait()
    proc.stdout.close()
    wal = Path(f"{db}-wal")
    with wal.open("r+b") as fh:
        fh.truncate(wal.stat().st_size - 100)  # cut into the last commit's frame
    cache = EvalCache(db)
    assert len(cache) == 39 and cache.get("k39") is None
    _assert_rows_intact(cache, 39)


def test_unreadable_cache_file_is_a_config_error(tmp_path):
    bad = tmp_path / "c.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="c.sqlite: evaluation cache unreadable"):
        EvalCache(bad)
