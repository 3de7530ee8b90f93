"""Tasks rendered through a tokenizer's chat template, for chat pools."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from merge_env.errors import ConfigError
from merge_env.scoring.tasks.task import Example, Task

logger = logging.getLogger(__name__)


def chat_prompt(tokenizer: Any, user: str, system: str | None) -> str:
    """Return the chat template's text for (system, user) with the assistant turn opened."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"tokenizer {type(tokenizer).__name__} has no chat template")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def chat_examples(tokenizer: Any, examples: Iterable[Example], system: str | None) -> list[Example]:
    """Return the examples with each prompt rendered through the chat template."""
    return [Example(chat_prompt(tokenizer, ex.prompt, system), ex.answer) for ex in examples]


def chat_task(tokenizer: Any, task: Task, system: str | None) -> Task:
    """The task with both splits' prompts rendered through the chat template (a new fingerprint,
    so scores of the raw prompts are never reused); the metric and scorer are kept."""
    return dataclasses.replace(
        task,
        search=tuple(chat_examples(tokenizer, task.search, system)),
        test=tuple(chat_examples(tokenizer, task.test, system)),
    )
