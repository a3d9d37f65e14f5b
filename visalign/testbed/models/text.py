"""Our own text side for the built-in models: a word tokenizer over the world's closed vocabulary and a
small transformer encoder. The unconditional (classifier-free guidance) prompt is the empty string, a
sequence holding only the NULL token."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..world import text as text_world
from ..world.grammar import PromptError, parse_prompt
from ..world.vocab import vocabulary

PAD, NULL = 0, 1


def _lower_words(prompt: str) -> list[str]:
    return prompt.strip().lower().split()


class WordTokenizer:
    """Prompt -> ids over a fixed word list. ids: 0 pad, 1 null (empty prompt), 2.. the words. `split` cuts
    a prompt into tokens (default: lower-cased words; the text task: template words, then one per letter)."""

    def __init__(self, words: tuple[str, ...] | None = None, max_length: int = 8, split=_lower_words):
        self.words = tuple(words or vocabulary())
        self.ids = {w: i + 2 for i, w in enumerate(self.words)}
        self.max_length = max_length
        self.split = split

    @property
    def vocab_size(self) -> int:
        return len(self.words) + 2

    def encode(self, prompt: str) -> list[int]:
        words = self.split(prompt)
        if not words:
            return [NULL]
        for w in words:
            if w not in self.ids:
                raise PromptError(
                    f"unknown word '{w}' in prompt {prompt!r}; accepted vocabulary: {' '.join(self.words)}"
                )
        if len(words) > self.max_length:
            raise PromptError(f"prompt {prompt!r} has {len(words)} words; the model reads at most {self.max_length}")
        return [self.ids[w] for w in words]

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        """prompts -> ids [B, L] (L = max_length), right-padded with PAD."""
        out = torch.full((len(prompts), self.max_length), PAD, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids = self.encode(p)
            out[i, : len(ids)] = torch.tensor(ids)
        return out


# The world tasks a built-in model can draw: task -> (its token list, how a prompt splits into tokens).
TASKS = {"shapes": (vocabulary, _lower_words), "text": (text_world.vocabulary, text_world.prompt_tokens)}
PARSERS = {"shapes": parse_prompt, "text": text_world.parse_prompt}  # task -> prompt -> its spec


def check_task(task: str) -> None:
    """A model config's world task must be one of TASKS (one-line error otherwise)."""
    if task not in TASKS:
        raise ValueError(f"task '{task}' is not one of {', '.join(TASKS)}")


def make_tokenizer(task: str, max_length: int) -> WordTokenizer:
    words, split = TASKS[task]
    return WordTokenizer(words(), max_length, split)


class TextEncoder(nn.Module):
    """ids [B, L] -> (tokens [B, L, D], pooled [B, D], mask [B, L] True where a real token is)."""

    def __init__(self, vocab_size: int, dim: int = 128, layers: int = 2, heads: int = 4, max_length: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(max_length, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, ids: torch.Tensor):
        mask = ids != PAD  # [B, L]
        h = self.embed(ids) + self.pos[: ids.shape[1]]  # [B, L, D]
        h = self.norm(self.encoder(h, src_key_padding_mask=~mask))
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # [B, D]
        return h, pooled, mask
