"""An EMA copy of the trained parameters that the policy can compute with: DiffusionNFT's old model, and the
averaged weights that `train.ema_decay` evaluates and exports (as Flow-GRPO evaluates an EMA of its LoRA).

Only the trained tensors are copied (the LoRA weights, or the whole network in full fine-tuning), and
`swapped()` puts them in place for a no-grad forward, so no second model is built.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class EMAWeights:
    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        """shadow <- decay * shadow + (1 - decay) * current, after each optimizer step."""
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def _exchange(self) -> None:
        for s, p in zip(self.shadow, self.params):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)

    @contextmanager
    def swapped(self):
        """Inside the block the parameters hold the EMA values (use under torch.no_grad())."""
        self._exchange()
        try:
            yield
        finally:
            self._exchange()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"ema.{i}": s for i, s in enumerate(self.shadow)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """state: a checkpoint's extra tensors; only the ema.* keys are this copy's."""
        state = {k: v for k, v in state.items() if k.startswith("ema.")}
        if len(state) != len(self.shadow):
            raise ValueError(f"EMA state holds {len(state)} tensors, the model trains {len(self.shadow)}")
        for i, s in enumerate(self.shadow):
            s.copy_(state[f"ema.{i}"])
