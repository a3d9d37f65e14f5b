"""Advantage estimators: pure functions of rewards (plus, for DDPO, a small per-prompt state).

GRPO (Shao et al., 2024; Flow-GRPO, Liu et al., 2025): A = (r - mean_group) / (std_group + eps), the
group being the samples of one prompt; with `global_std` the std is taken over the whole batch instead
(Flow-GRPO's default), so a group whose rewards barely differ is not blown up to unit scale.
DDPO (Black et al., 2023): per-prompt running statistics over the last rollouts of each prompt.
Both clip advantages to +-clip (Flow-GRPO uses 5).
"""

from __future__ import annotations

from collections import deque

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, *, global_std: bool = False, eps: float = 1e-4,
                     clip: float = 5.0) -> torch.Tensor:
    """rewards [B], consecutive runs of `group_size` share a prompt -> advantages [B] (population std)."""
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)  # [G, n]
    mean = r.mean(1, keepdim=True)  # [G, 1]
    std = r.std(unbiased=False) if global_std else r.std(1, keepdim=True, unbiased=False)
    return ((r - mean) / (std + eps)).clamp(-clip, clip).flatten()


def best_worst_rows(rewards: torch.Tensor, group_size: int, k: int) -> torch.Tensor:
    """DanceGRPO's best-of-N subsampling (Xue et al., 2025, arXiv 2505.07818): sample a larger group, train on
    its k best and k worst samples only. The update's cost follows the kept 2k, the advantage baseline the whole
    group (advantages are computed before this selection), and the kept samples are those whose advantages are
    largest in magnitude, so an update carries most of the group's signal. Ties keep index order (a stable sort).
    rewards [B], consecutive runs of `group_size` share a prompt -> the kept indices [G * 2k], ascending."""
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if not 0 < 2 * k < group_size:
        raise ValueError(f"keeping the {k} best and {k} worst of a group of {group_size} needs 0 < 2k < group_size")
    order = torch.sort(rewards.float().view(-1, group_size), dim=1, descending=True, stable=True).indices  # [G, n]
    keep = torch.cat([order[:, :k], order[:, -k:]], 1)  # [G, 2k] the best k, then the worst k
    base = torch.arange(keep.shape[0])[:, None] * group_size  # [G, 1]
    return (keep + base).flatten().sort().values  # [G * 2k]


class PerPromptStatTracker:
    """DDPO's per-prompt normalisation: each prompt keeps its last `buffer_size` rewards; once it has
    `min_count` of them its own mean/std normalise its rewards, before that the whole batch's do."""

    def __init__(self, buffer_size: int = 32, min_count: int = 16, eps: float = 1e-6, clip: float = 5.0):
        self.buffer_size, self.min_count, self.eps, self.clip = buffer_size, min_count, eps, clip
        self.buffers: dict[str, deque] = {}

    def update(self, prompts: list[str], rewards: torch.Tensor) -> torch.Tensor:
        """prompts [B], rewards [B] -> advantages [B]; adds the rewards to the buffers first."""
        r = rewards.float()
        out = torch.empty_like(r)
        for p in dict.fromkeys(prompts):
            idx = torch.tensor([i for i, q in enumerate(prompts) if q == p])
            buf = self.buffers.setdefault(p, deque(maxlen=self.buffer_size))
            buf.extend(r[idx].tolist())
            ref = torch.tensor(list(buf)) if len(buf) >= self.min_count else r
            out[idx] = (r[idx] - ref.mean()) / (ref.std(unbiased=False) + self.eps)
        return out.clamp(-self.clip, self.clip)

    def state_dict(self) -> dict:
        return {"buffers": {p: list(b) for p, b in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = {p: deque(v, maxlen=self.buffer_size) for p, v in state["buffers"].items()}


def pair_within_groups(scores: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Preference pairs of online DPO (D3PO, Yang et al., 2023, arXiv 2311.13231; SPO): in each group of
    `group_size` consecutive samples, the i-th best is preferred to the i-th worst (i < group_size // 2), so
    every sample is in at most one pair and the pairs span the group's reward range; pairs with equal
    scores carry no preference and are dropped. Ties in the sort keep index order.
    scores [B] -> (chosen [P], rejected [P]) indices into scores."""
    if scores.dim() != 1 or scores.numel() % group_size != 0 or group_size < 2:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size} (>= 2)")
    s = scores.float().view(-1, group_size)  # [G, n]
    order = torch.sort(-s, dim=1, stable=True).indices  # [G, n] best first
    half = group_size // 2
    base = (torch.arange(s.shape[0]) * group_size)[:, None]  # [G, 1]
    chosen = (order[:, :half] + base).flatten()  # [G * half]
    rejected = (order.flip(1)[:, :half] + base).flatten()
    keep = scores[chosen] > scores[rejected]
    return chosen[keep], rejected[keep]
