"""vlm_judge on a tiny LLaVA built offline (CLIP vision tower + Llama, a word-level tokenizer, a chat template),
saved and loaded back the way a published checkpoint is: scores equal p(yes) / (p(yes) + p(no)) computed one
sample at a time (so left padding in batches is right), 0.5 when the yes and no logits are tied, and clear
errors for a tokenizer without yes/no tokens and a question without {prompt}."""

import pytest
import torch

from visalign.rewards import load_reward
from visalign.rewards.vlm_judge import VLMJudge

WORDS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "USER", "ASSISTANT", ":", "?", ".", '"', "Yes", "No", "yes", "no",
         "Does", "this", "image", "match", "the", "description", "Answer", "or", "a", "red", "cat", "two", "blue",
         "squares"]
TEMPLATE = ("{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% else %}"
            "{{ c['text'] }}{% endif %}{% endfor %}{% endfor %} ASSISTANT:")


def tiny_llava(path, seed=0):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", extra_special_tokens={"image_token": "<image>"})
    ip = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=4, vision_feature_select_strategy="default",
                          chat_template=TEMPLATE, num_additional_image_tokens=1)
    torch.manual_seed(seed)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=16, patch_size=4),
        text_config=LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0),
        image_token_id=WORDS.index("<image>"), vision_feature_layer=-1, vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(cfg).eval()
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return model, proc


IMAGES = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(1)) * 2 - 1
PROMPTS = ["a red cat", "two blue squares", "a cat"]  # different lengths: batches are padded


def test_vlm_judge_scores_are_the_yes_probability_share(tmp_path):
    tiny_llava(tmp_path / "vlm")
    judge = load_reward("vlm_judge", model=str(tmp_path / "vlm"), local_files_only=True, batch_size=3)
    assert judge.yes == [WORDS.index("Yes"), WORDS.index("yes")] and judge.no == [WORDS.index("No"), WORDS.index("no")]
    out = judge(IMAGES, PROMPTS)
    assert out.scores.shape == (3,) and ((out.scores > 0) & (out.scores < 1)).all()
    # one sample at a time, no padding: the same numbers
    one = torch.cat([judge(IMAGES[i:i + 1], PROMPTS[i:i + 1]).scores for i in range(3)])
    torch.testing.assert_close(out.scores, one, atol=1e-5, rtol=1e-5)
    text = judge.text("a red cat")
    assert text == 'USER: <image> Does this image match the description "a red cat"? Answer yes or no. ASSISTANT:'
    # by hand: with the yes and no rows of the output layer equal, p(yes) = p(no) -> 0.5
    with torch.no_grad():
        w = judge.model.lm_head.weight
        w[judge.yes + judge.no] = w[judge.yes[0]].clone()
    torch.testing.assert_close(judge(IMAGES, PROMPTS).scores, torch.full((3,), 0.5))
    assert not judge.differentiable and "vlm_judge" in judge.name


def test_vlm_judge_refusals(tmp_path):
    model, proc = tiny_llava(tmp_path / "vlm")
    with pytest.raises(ValueError, match="single, distinct tokens for yes and no"):
        VLMJudge(model, proc, yes_words=("Oui",))
    with pytest.raises(ValueError, match="must hold {prompt}"):
        VLMJudge(model, proc, question="Is this good?")
    with pytest.raises(ValueError, match="needs reward_options.model"):
        load_reward("vlm_judge")
