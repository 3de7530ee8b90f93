"""PathEncoder: the HM3 policy's state encoder (a GRU over the inference path), as an SB3 extractor.

HM3 (DESIGN §1.1) encodes the state -- preference, the path built so far, the position -- with a
GRU over the path's slots. Here each slot row ``[source + 1, layer, scale level]`` of MergeEnv's
observation is embedded (one table per field, summed), a learned start token is put in front, and
a GRU runs over the whole padded sequence; the feature is the GRU output at the last filled slot.
Because a GRU is causal, the zero rows after the path cannot reach that output, which masks them
exactly. The preference, the position and the merge choice (both one-hot after SB3's
preprocessing), and with continuous merge weights (``weights="simplex"``) the chosen weights, are
concatenated to it.
"""

from __future__ import annotations

import gymnasium as gym
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from merge_env.errors import ConfigError

REQUIRED_KEYS = ("preference", "merge", "path", "position")


class PathEncoder(BaseFeaturesExtractor):
    """Features of a MergeEnv observation: GRU(path) ++ preference ++ position ++ merge choice."""

    def __init__(
        self, observation_space: gym.spaces.Dict, embed_dim: int = 32, hidden_dim: int = 64
    ) -> None:
        missing = [k for k in REQUIRED_KEYS if k not in observation_space.spaces]
        if missing:
            raise ConfigError(f"PathEncoder: observation space lacks key(s) {missing}")
        path_space = observation_space["path"]
        if len(path_space.shape) != 2 or path_space.shape[1] != 3:
            raise ConfigError(
                f"PathEncoder: 'path' must have shape (t_max, 3), got {path_space.shape}"
            )
        k = int(observation_space["preference"].shape[0])
        n_pos = int(observation_space["position"].n)
        # Discrete: n; MultiDiscrete (per-part merge weights): the sum, one-hot per component
        n_merge = int(gym.spaces.flatdim(observation_space["merge"]))
        # continuous merge weights (MergeEnv weights="simplex"): the chosen weights too
        self.flat_keys = tuple(
            key for key in ("preference", "position", "merge", "weights")
            if key in observation_space.spaces
        )  # fmt: skip
        n_w = int(observation_space["weights"].shape[0]) if "weights" in self.flat_keys else 0
        super().__init__(observation_space, features_dim=hidden_dim + k + n_pos + n_merge + n_w)
        # one vocabulary size for all three fields: the Box's upper bound covers each of them
        vocab = int(path_space.high.max()) + 1
        self.source_embed = nn.Embedding(vocab, embed_dim)
        self.layer_embed = nn.Embedding(vocab, embed_dim)
        self.scale_embed = nn.Embedding(vocab, embed_dim)
        self.start = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.gru = nn.GRU(embed_dim, hidden_dim, batch_first=True)
        self.vocab = vocab

    def encode_path(self, path: torch.Tensor) -> torch.Tensor:
        """GRU summary (batch, hidden_dim) of a batch of paths (batch, t_max, 3)."""
        rows = path.round().long().clamp(0, self.vocab - 1)
        filled = rows[..., 0] > 0  # source + 1 is never 0 in a filled row
        slots = self.source_embed(rows[..., 0]) + self.layer_embed(rows[..., 1])
        slots = (slots + self.scale_embed(rows[..., 2])) * filled.unsqueeze(-1)
        seq = torch.cat([self.start.expand(len(rows), 1, -1), slots], dim=1)
        out, _ = self.gru(seq)
        # paths are prefixes (env fills rows in order), so the filled count is the last index
        last = filled.sum(dim=1)
        return out[torch.arange(len(rows), device=out.device), last]

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        """Concatenated features for the policy and value heads."""
        path = observations["path"]
        # SB3's rollout buffer keeps Discrete observations as (batch, 1): one-hot is then 3-D
        flat = [observations[k].float().reshape(len(path), -1) for k in self.flat_keys]
        return torch.cat([self.encode_path(path), *flat], dim=1)
