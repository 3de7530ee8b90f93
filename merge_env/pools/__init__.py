"""Model pools: what conf/pool builds (spec), the synthetic zoo, SmolLM2, and the one fine-tuning loop."""
