"""The real-domain pool: corpora, passages, held-out documents, continuation scoring, the build."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch

from merge_env.errors import ConfigError
from merge_env.pools import domains
from merge_env.pools.cache import task_records, tasks_from_records
from merge_env.scoring.evaluate import Evaluator
from merge_env.scoring.tasks.synthetic import char_tokenizer
from merge_env.scoring.tasks.task import Example, Task

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def _text(seed: int, words: int, vocab: list[str]) -> str:
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(vocab), (words,), generator=g).tolist()
    return " ".join(vocab[i] for i in picks)


def _corpus() -> dict[str, list[tuple[str, str]]]:
    """Two tiny 'domains' with different vocabularies, 40 documents each."""
    code = ["def", "return", "x", "=", "(", ")", "if", "else:", "for", "in", "+", "1"]
    return {
        "code": sorted((f"c{i:02d}.py", _text(i, 60, code)) for i in range(40)),
        "docs": sorted((f"topic{i:02d}", _text(100 + i, 60, WORDS)) for i in range(40)),
    }


SMALL = {"n_search": 3, "n_test": 4, "prompt_chars": 40, "answer_chars": 12, "held_out": 0.2,
         "seq_len": 16, "steps": 4, "batch_size": 2, "lr": 1e-2, "warmup": 1}  # fmt: skip


# ---------------------------------------------------------------- corpora and passages


def test_the_real_corpora_are_the_standard_librarys_code_and_reference():
    corpus = domains.load_corpus(("code", "docs"))
    names = [n for n, _ in corpus["code"]]
    assert "json/decoder.py" in names and names == sorted(names)
    assert not any(part in {"test", "site-packages"} for n in names for part in n.split("/"))
    assert "pydoc_data/topics.py" not in names  # the docs corpus itself is not code
    assert any(n == "if" for n, _ in corpus["docs"])  # the reference's "if" statement topic
    assert domains.corpus_digest(corpus) == domains.corpus_digest(
        domains.load_corpus(("code", "docs"))
    )
    with pytest.raises(ConfigError, match="unknown \\['math'\\]"):
        domains.load_corpus(("code", "math"))


def test_passages_are_consecutive_and_cut_before_a_word():
    text = "one two  three\n    four five six seven eight nine ten eleven twelve"
    out = domains.passages(text, 9, 6)
    assert out and "".join(ex.prompt + ex.answer for ex in out) == text[: sum(
        len(ex.prompt) + len(ex.answer) for ex in out)]  # fmt: skip
    for ex in out:
        assert len(ex.prompt) >= 9 and len(ex.answer) >= 6
        assert ex.answer.startswith(" ") and not ex.prompt[-1].isspace()
    assert domains.passages("nospaceshere" * 5, 9, 6) == []


def test_tasks_read_only_held_out_documents_and_score_the_continuation():
    corpus = _corpus()
    config = domains.DomainConfig(**SMALL)
    task, train = domains.domain_task("docs", corpus["docs"], config)
    assert task.metric == "loglik" and not task.eos
    assert len(task.search) == 3 and len(task.test) == 4
    train_names = {n for n, _ in train}
    held = {n: t for n, t in corpus["docs"] if n not in train_names}
    for ex in (*task.search, *task.test):  # every passage is from a held-out document
        assert any(ex.prompt + ex.answer in t for t in held.values())
    # each split's passages come from that split's documents only, and none is in the training text
    for split in ("search", "test"):
        own = [t for n, t in held.items() if domains.split_of(n, 0, 0.2) == split]
        for ex in task.split(split):
            assert any(ex.prompt + ex.answer in t for t in own)
            assert not domains.leaks(ex, [t for _, t in train])
    again, _ = domains.domain_task("docs", corpus["docs"], config)
    assert again == task  # seeded
    with pytest.raises(ConfigError, match="domain 'docs': .* test passages .*pool.n_test"):
        domains.domain_task(
            "docs", corpus["docs"], domains.DomainConfig(**{**SMALL, "n_test": 500})
        )


def test_held_out_passages_copied_in_a_training_document_are_dropped():
    corpus = _corpus()["docs"]
    config = domains.DomainConfig(**SMALL)
    task, train = domains.domain_task("docs", corpus, config)
    # a training document that quotes one test passage (with its context) drops that passage
    quoted = task.test[0]
    name = next(f"zz{i}" for i in range(100) if domains.split_of(f"zz{i}", 0, 0.2) == "train")
    extra = (name, "preface " + quoted.prompt + quoted.answer + " after")
    again, _ = domains.domain_task("docs", sorted([*corpus, extra]), config)
    assert quoted not in again.test and domains.leaks(quoted, [extra[1]])
    # held-out documents that all copy training ones leave nothing to draw
    copies = [(n, text) for n, text in corpus if domains.split_of(n, 0, 0.2) == "train"]
    held = [n for n, _ in corpus if domains.split_of(n, 0, 0.2) != "train"]
    copied = sorted([*copies, *((n, copies[i][1]) for i, n in enumerate(held))])
    with pytest.raises(ConfigError, match="0 search passages \\(none found in the training"):
        domains.domain_task("docs", copied, config)


def test_a_task_without_eos_scores_the_answer_tokens_alone():
    tok = char_tokenizer()
    ex = Example("abc de", " fg")
    with_eos, without = Evaluator(tok).encode([ex]), Evaluator(tok).encode([ex], eos=False)
    assert with_eos[0].ids == (*without[0].ids, tok.eos_token_id)
    plain = Task("t", (ex,), (Example("xyz uv", " wq"),))
    cont = Task("t", (ex,), (Example("xyz uv", " wq"),), eos=False)
    assert plain.fingerprint != cont.fingerprint
    # True leaves the digest as it was before the key existed: the payload without it
    payload = {"name": "t", "metric": "exact_match", "search": [["abc de", " fg"]],
               "test": [["xyz uv", " wq"]]}  # fmt: skip
    blob = json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode()
    assert plain.fingerprint == hashlib.sha256(blob).hexdigest()[:32]
    (back,) = tasks_from_records(task_records([cont]))
    assert back == cont and not back.eos
    (back,) = tasks_from_records(task_records([plain]))
    assert back.eos and "eos" not in task_records([plain])[0]

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )).eval()  # fmt: skip
    score = Evaluator(tok).score_tasks(model, [cont], split="test")["t"]
    ids = Evaluator(tok).encode(cont.test, eos=False)[0]
    with torch.no_grad():
        logp = model(torch.tensor([ids.ids])).logits.log_softmax(-1)[0]
    answer = [logp[i - 1, ids.ids[i]].item() for i in range(ids.n_prompt, len(ids.ids))]
    assert len(answer) == 3 and score.loglik == pytest.approx(sum(answer) / 3, abs=1e-5)


# ---------------------------------------------------------------- the build


def test_pool_builds_low_rank_experts_that_learn_their_domain(tiny_domain_seed, tmp_path):
    config = domains.DomainConfig(**{**SMALL, "steps": 12})
    pool = domains.build_domain_pool(config, tmp_path / "cache", corpus=_corpus(), progress=False)
    assert pool.root.name.startswith("domains-") and sorted(pool.experts) == ["code", "docs"]
    assert [t.name for t in pool.tasks] == ["code", "docs"] and not any(t.eos for t in pool.tasks)
    manifest = json.loads((pool.root / "pool.json").read_text())
    assert manifest["losses"]["code"][-1] < manifest["losses"]["code"][0]
    from merge_env.search.assemble import load_causal_lm

    base = load_causal_lm(tiny_domain_seed, torch.float32).state_dict()
    expert = load_causal_lm(pool.experts["docs"], torch.float32).state_dict()
    delta = expert["model.layers.0.mlp.up_proj.weight"] - base["model.layers.0.mlp.up_proj.weight"]
    assert 0 < torch.linalg.matrix_rank(delta) <= config.lora_rank
    assert torch.equal(expert["model.norm.weight"], base["model.norm.weight"])  # adapters only
    ev = Evaluator(char_tokenizer())
    docs = pool.tasks[1]
    own = ev.score_tasks(load_causal_lm(pool.experts["docs"], torch.float32), [docs], "test")
    other = ev.score_tasks(load_causal_lm(pool.experts["code"], torch.float32), [docs], "test")
    assert own["docs"].loglik > other["docs"].loglik  # each expert learnt its own domain
    # from the cache: the same pool, not trained again; another corpus is another pool
    again = domains.build_domain_pool(config, tmp_path / "cache", corpus=_corpus(), progress=False)
    assert again.root == pool.root and again.tasks == pool.tasks
    corpus = _corpus()
    corpus["docs"] = corpus["docs"][1:]
    other_pool = domains.build_domain_pool(
        config, tmp_path / "cache", corpus=corpus, progress=False
    )
    assert other_pool.root != pool.root


def test_config_and_corpus_are_checked(tiny_domain_seed, tmp_path):
    with pytest.raises(ConfigError, match="pool.held_out"):
        domains.DomainConfig(held_out=0.5)
    with pytest.raises(ConfigError, match="unknown domain pool setting\\(s\\) \\['step'\\]"):
        domains.domain_pool(cache_dir=str(tmp_path), step=3)
    with pytest.raises(ConfigError, match="pool.domains"):
        domains.DomainConfig(domains=("code", "code"))
    with pytest.raises(ConfigError, match="no documents for \\['docs'\\]"):
        domains.build_domain_pool(domains.DomainConfig(**SMALL), tmp_path, corpus={"code": []})
    with pytest.raises(ConfigError, match="no training document is 500 tokens long"):
        domains.build_domain_pool(domains.DomainConfig(**{**SMALL, "seq_len": 500}), tmp_path,
                                  corpus=_corpus(), progress=False)  # fmt: skip
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp", "domains-"))]


def test_build_zoo_reports_a_domain_pool(tiny_domain_seed, tmp_path, monkeypatch):
    """``build_zoo --pool smollm2_domains``: the pool built with the settings given, its TEST
    table on log-likelihood, and each plain merge's share of each expert's own-domain gain,
    checked against a uniform average of the weights made by hand."""
    from rich.console import Console

    from experiments import build_zoo
    from merge_env.search.assemble import load_causal_lm

    monkeypatch.setattr(domains, "load_corpus", lambda names: _corpus())
    console = Console(record=True, width=200)
    settings = [f"{k}={v}" for k, v in {**SMALL, "steps": 12}.items()]
    config = build_zoo.domains_config(0, [*settings, "lora_rank=4"])
    assert (config.lora_rank, config.steps, config.domains) == (4, 12, ("code", "docs"))
    pool = build_zoo.run_domains(cache_dir=tmp_path / "cache", progress=False, console=console,
                                 config=config)  # fmt: skip
    text = console.export_text()
    assert "domain pool seed 0: built at" in text and "lora_rank=4" in text
    assert "loglik / tok" in text and "linear uniform keeps of each own-domain gain" in text
    # the trade-off checks that mean something in nats, none of "base partly solves"
    assert "expert:code on code:" in text and "expert:docs loses elsewhere:" in text
    assert "partly solves" not in text

    ev = Evaluator(char_tokenizer())
    models = {n: load_causal_lm(p, torch.float32) for n, p in pool.checkpoints().items()}
    score = {n: ev.score_tasks(m, pool.tasks, "test") for n, m in models.items()}
    base_row = next(line for line in text.splitlines() if line.startswith("│ base "))
    assert f"{score['base']['code'].loglik:.3f} / " in base_row
    average = load_causal_lm(pool.base, torch.float32)
    states = [models[f"expert:{d}"].state_dict() for d in ("code", "docs")]
    average.load_state_dict({k: (states[0][k] + states[1][k]) / 2 for k in states[0]})
    averaged = ev.score_tasks(average, pool.tasks, "test")
    regime = build_zoo.print_domain_merges(pool, Console(file=io.StringIO()))
    for d in ("code", "docs"):
        gain = score[f"expert:{d}"][d].loglik - score["base"][d].loglik
        assert regime.gains[d] == pytest.approx(gain, abs=1e-5)
        kept = (averaged[d].loglik - score["base"][d].loglik) / gain
        assert regime.kept["linear uniform"][d] == pytest.approx(kept, abs=1e-3)
    for flags in (["--core-only"], ["--preset", "v5"]):
        with pytest.raises(
            ConfigError, match=f"{' '.join(flags)}: for the zoo preset, not --pool smollm2_domains"
        ):
            build_zoo.main(["--pool", "smollm2_domains", *flags])
    with pytest.raises(ConfigError, match="--fixed-lambda: --pool smollm2_domains scores its"):
        build_zoo.main(["--pool", "smollm2_domains", "--fixed-lambda"])
    asked = []  # --fixed-lambda still reaches the SmolLM2 pool
    monkeypatch.setattr(build_zoo, "run_smollm2", lambda *a, **kw: asked.append(kw))
    assert build_zoo.main(["--pool", "smollm2", "--fixed-lambda"]) == 0
    assert asked[0]["tune_lambda"] is False


def test_moe_experiment_runs_on_a_domain_pool(tiny_domain_seed, tmp_path, monkeypatch):
    """``python -m experiments.moe pool=smollm2_domains`` end to end on a tiny seed model: the
    per-task columns and the claims are on the continuation's log-likelihood."""
    from hydra import compose, initialize_config_dir

    from experiments.moe import run

    monkeypatch.setattr(domains, "load_corpus", lambda names: _corpus())
    monkeypatch.chdir(tmp_path)
    conf = Path(__file__).resolve().parents[2] / "conf"
    overrides = ["pool=smollm2_domains", f"pool.cache_dir={tmp_path / 'cache'}",
                 *[f"pool.{k}={v}" for k, v in SMALL.items()], "router_prompts=3",
                 "routers=[hidden_mean]"]  # fmt: skip
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        best = run(compose("moe", overrides=overrides))
    out = json.loads((tmp_path / "outputs/moe/moe_results.json").read_text())
    assert out["tasks"] == ["code", "docs"]
    assert {o["metric"] for o in out["ordering"]} == {"loglik", "token_accuracy"}
    moe_rows = [r for r in out["scores"] if r.startswith(("mixtral", "ppl"))]
    assert best == max(out["macro"][r]["loglik"] for r in moe_rows)
    assert all(sum(c.values()) == 4 for m in out["confusion"].values() for c in m.values())
    table = (tmp_path / "outputs/moe/moe_table.md").read_text()
    assert "test split, loglik per task" in table
    row = next(line for line in table.splitlines() if line.startswith("| base |"))
    assert float(row.split("|")[2]) == pytest.approx(
        out["scores"]["base"]["code"]["loglik"], abs=1e-3
    )
