"""Preference-conditioned PPO: the agent, offline pre-training, path encoder, batched vec env, callbacks."""
