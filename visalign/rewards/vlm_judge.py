"""`vlm_judge`: a vision-language model asked a yes/no question about each image, scored from its next-token
probabilities: p(yes) / (p(yes) + p(no)), in [0, 1]. This is the pointwise judge of UnifiedReward (Wang et
al., 2025) and of VQAScore (Lin et al., 2024, which reads p("Yes") the same way), on any transformers
image-text-to-text model given by hub id or path (LLaVA, Qwen2-VL, Idefics...): AutoModelForImageTextToText
+ AutoProcessor, the question put through the processor's chat template. "yes"/"no" are the single tokens
of the yes_words / no_words spellings ("Yes", "yes", " Yes", " yes"...), summed per side. Not
differentiable: the images go through the processor as 8-bit pictures."""

from __future__ import annotations

import torch
from PIL import Image

from ..images import tensor_to_images
from ..types import RewardOutput
from .base import REWARDS, Reward
from .clip import _dtype, _from_pretrained

QUESTION = 'Does this image match the description "{prompt}"? Answer yes or no.'
YES, NO = ("Yes", "yes", " Yes", " yes", "YES"), ("No", "no", " No", " no", "NO")


def answer_tokens(tokenizer, words) -> list[int]:
    """Ids of the spellings that are one token (not unknown); several spellings may share one id."""
    ids = set()
    for w in words:
        enc = tokenizer.encode(w, add_special_tokens=False)
        if len(enc) == 1 and enc[0] != tokenizer.unk_token_id:
            ids.add(enc[0])
    return sorted(ids)


class VLMJudge(Reward):
    name = "vlm_judge"
    differentiable = False
    needs_text = True
    value_range = (0.0, 1.0)

    def __init__(self, model, processor, question: str = QUESTION, yes_words=YES, no_words=NO, batch_size: int = 8,
                 template: str | None = None):
        if "{prompt}" not in question:
            raise ValueError(f"vlm_judge question must hold {{prompt}} where the prompt goes, got '{question}'")
        if template is not None and "{question}" not in template:
            raise ValueError(f"vlm_judge template must hold {{question}}, got '{template}'")
        self.model, self.processor, self.question = model.eval().requires_grad_(False), processor, question
        self.template, self.batch_size = template, batch_size
        tok = processor.tokenizer
        self.yes, self.no = answer_tokens(tok, yes_words), answer_tokens(tok, no_words)
        if not self.yes or not self.no or set(self.yes) & set(self.no):
            raise ValueError(f"vlm_judge needs single, distinct tokens for yes and no; the tokenizer gives yes "
                             f"{self.yes} for {list(yes_words)} and no {self.no} for {list(no_words)}: set yes_words/no_words")
        tok.padding_side = "left"  # the next-token logits are then at position -1 for every row
        if template is None and not getattr(processor, "chat_template", None):
            raise ValueError("vlm_judge: the processor has no chat template; give template='... {question} ...' with "
                             "the model's image placeholder")
        self.device = next(model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def text(self, prompt: str) -> str:
        q = self.question.format(prompt=prompt)
        if self.template is not None:
            return self.template.format(question=q)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @torch.no_grad()
    def __call__(self, images, prompts, metadata=None) -> RewardOutput:
        pics = [Image.fromarray(a) for a in tensor_to_images(images)]
        p_yes, p_no = [], []
        for i in range(0, len(pics), self.batch_size):
            inputs = self.processor(images=pics[i:i + self.batch_size], text=[self.text(p) for p in prompts[i:i + self.batch_size]],
                                    return_tensors="pt", padding=True)
            inputs = inputs.to(self.device, dtype=self.dtype)  # casts the pixels only (ids stay integers)
            probs = self.model(**inputs).logits[:, -1].float().softmax(-1)  # [b, V] the answer's first token
            p_yes.append(probs[:, self.yes].sum(-1))
            p_no.append(probs[:, self.no].sum(-1))
        y, n = torch.cat(p_yes), torch.cat(p_no)  # [B]
        return RewardOutput((y / (y + n).clamp_min(1e-12)).cpu(), {"p_yes": y.cpu(), "p_no": n.cpu()})


@REWARDS.register("vlm_judge", "p(yes) / (p(yes) + p(no)) of a transformers vision-language model asked whether the "
                  "image matches the prompt (UnifiedReward/VQAScore style); options: model, processor, question, "
                  "local_files_only, dtype, batch_size")
def _vlm_judge(model: str = "", processor: str | None = None, question: str = QUESTION, yes_words=YES, no_words=NO,
               local_files_only: bool = True, dtype: str = "float32", batch_size: int = 8, template: str | None = None):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if not model:
        raise ValueError("reward 'vlm_judge' needs reward_options.model: a hub id or folder of an image-text-to-text "
                         "model, e.g. llava-hf/llava-1.5-7b-hf or Qwen/Qwen2-VL-7B-Instruct")
    net = _from_pretrained(AutoModelForImageTextToText, model, local_files_only, "vlm_judge model", dtype=_dtype(dtype))
    proc = _from_pretrained(AutoProcessor, processor or model, local_files_only, "vlm_judge processor")
    return VLMJudge(net, proc, question, tuple(yes_words), tuple(no_words), batch_size, template)
