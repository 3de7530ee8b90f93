"""Pool specifications: which tasks a run scores, and a chat pool's template on outside tasks."""

from __future__ import annotations

import pytest

from merge_env.errors import ConfigError
from merge_env.pools.spec import PoolSpec, local_pool, tasks_or_pool
from merge_env.scoring.tasks.chat import chat_prompt
from merge_env.scoring.tasks.synthetic import char_tokenizer
from merge_env.scoring.tasks.task import Example, Task

# a chat template for the char tokenizer: the shape of a real one, plain characters only
CHAT = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]:{% endif %}"
)
RAW = [Task("sum", (Example("1+1=", "2"), Example("2+3=", "5")), (Example("4+4=", "8"),))]


@pytest.fixture
def chat_tok_dir(tmp_path):
    tok = char_tokenizer()
    tok.chat_template = CHAT
    tok.save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


def _pool(zoo, **kwargs) -> PoolSpec:
    return local_pool(str(zoo.base), {k: str(v) for k, v in zoo.experts.items()}, **kwargs)


def test_chat_pool_renders_configured_tasks_through_its_template(tiny_zoo, chat_tok_dir):
    pool = _pool(tiny_zoo, tokenizer=str(chat_tok_dir), chat_template=True, system="be brief")
    (task,) = tasks_or_pool(pool, RAW)
    tok = char_tokenizer()
    tok.chat_template = CHAT
    assert [e.prompt for e in task.search] == [chat_prompt(tok, e.prompt, "be brief")
                                               for e in RAW[0].search]  # fmt: skip
    assert task.search[0].prompt == "[system] be brief\n[user] 1+1=\n[assistant]:"
    assert [e.answer for e in task.search + task.test] == ["2", "5", "8"]
    assert task.name == "sum" and task.metric == RAW[0].metric
    assert task.fingerprint != RAW[0].fingerprint  # raw-prompt scores are never reused


def test_plain_pool_and_pool_tasks_are_left_alone(tiny_zoo, chat_tok_dir):
    assert tasks_or_pool(_pool(tiny_zoo, tokenizer=str(chat_tok_dir)), RAW) == RAW
    own = PoolSpec(name="own", sources={"base": tiny_zoo.base}, tokenizer_dir=chat_tok_dir,
                   tasks=tuple(RAW), chat_template=True)  # fmt: skip
    assert tasks_or_pool(own, None) == RAW  # a chat pool's own tasks are already rendered
    with pytest.raises(ConfigError, match="brings no tasks"):
        tasks_or_pool(_pool(tiny_zoo), None)


def test_chat_pool_without_a_template_names_the_tokenizer_folder(tiny_zoo):
    pool = _pool(tiny_zoo, tokenizer=str(tiny_zoo.tokenizer_dir), chat_template=True)
    with pytest.raises(ConfigError, match=str(tiny_zoo.tokenizer_dir)):
        tasks_or_pool(pool, RAW)
