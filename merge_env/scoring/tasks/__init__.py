"""Task sets: the Task record, and one module per source (synthetic, jsonl, reasoning_gym,
humaneval, chat)."""
