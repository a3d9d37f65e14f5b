"""The text task of the world: prompt grammar and refusals, the train/held-out word split, the renderer,
the `text` prompt set, and a tiny text model built from its config."""

import numpy as np
import pytest
import torch

from visalign.testbed.models.builtin import ShapesFlowAdapter, ShapesModel, ShapesModelConfig
from visalign.models.registry import PolicyGenerator
from visalign.prompts import load_prompt_set
from visalign.testbed.pretrain.pretrain import TextStream
from visalign.testbed.world import text
from visalign.testbed.world.grammar import PromptError


def test_parse_and_tokens():
    assert text.parse_prompt('a sign that says "CAT"').text == "CAT"
    assert text.parse_prompt('  a sign that says  "Q" ').text == "Q"
    assert text.TextSpec("JAZZ").prompt == 'a sign that says "JAZZ"'
    assert text.prompt_tokens('a sign that says "GO"') == ["a", "sign", "that", "says", "G", "O"]
    assert text.prompt_tokens("") == []  # the unconditional prompt
    assert len(text.vocabulary()) == 4 + 26


@pytest.mark.parametrize("prompt, words", [
    ('a sign that says "cat"', "outside the OCR alphabet: 'act'"),
    ('a sign that says "C4T"', "outside the OCR alphabet: '4'"),
    ('a sign that says "HI!"', "outside the OCR alphabet: '!'"),
    ('a sign that says "A B"', "outside the OCR alphabet: ' '"),
    ('a sign that says "HELLO"', "has 5 letters; accepted: 1 to 4"),
    ('a sign that says ""', "has 0 letters"),
    ("a sign that says CAT", "does not parse"),
    ('a poster that says "CAT"', "does not parse"),
])
def test_refusals_are_one_line_and_say_what_is_accepted(prompt, words):
    with pytest.raises(PromptError) as e:
        text.parse_prompt(prompt)
    msg = str(e.value)
    assert words in msg and "\n" not in msg and ("A-Z" in msg or "1 to 4" in msg)


def test_word_split_holds_out_multi_letter_words_only():
    train, held = text.split_words("train"), text.split_words("eval")
    assert not set(train) & set(held) and set(train) | set(held) == set(text.WORDS)
    assert set(text.ALPHABET) <= set(train)  # every letter is trained on
    assert all(1 < len(w) <= 4 for w in held) and len(held) == round(0.25 * (len(text.WORDS) - 26))
    assert held == text.split_words("eval")  # seeded: the same every time
    with pytest.raises(ValueError, match="train, eval"):
        text.split_words("test")


def test_pretraining_stream_never_shows_a_held_out_word():
    prompts, images = TextStream(0, 32).batch(400)
    words = {text.parse_prompt(p).text for p in prompts}
    assert not words & set(text.split_words("eval")) and len(words) > 100
    assert images.shape == (400, 32, 64, 3) and images.dtype == np.uint8


def test_prompt_set_text_evaluates_held_out_words():
    ps = load_prompt_set("text")
    assert ps.categories == ["text"] and not ps.verifier
    assert ps.eval["text"] == text.prompts("eval") and ps.train["text"] == text.prompts("train")


def test_render_black_letters_on_white_inside_the_sign():
    rng = np.random.default_rng(0)
    img = text.render("WWWW", rng)
    assert img.shape == (32, 64, 3) and img.dtype == np.uint8
    dark = img.min(-1) < 128  # [H, W]
    assert 0.1 < dark.mean() < 0.5  # bold letters, mostly white
    for _ in range(20):  # the widest word at any jitter keeps a white border
        im = text.render("WWWW", rng)
        assert im[:, :2].min() > 200 and im[:, -2:].min() > 200 and im[:2].min() > 200 and im[-2:].min() > 200
    a, b = text.render("CAT", jitter=False), text.render("CAT", jitter=False)
    assert np.array_equal(a, b) and not np.array_equal(a, text.render("COT", jitter=False))
    # left-aligned: the first letter starts at the same column whatever the word's length
    first_col = lambda im: int(np.argmax((im.min(-1) < 128).any(0)))  # noqa: E731
    assert abs(first_col(text.render("T", jitter=False)) - first_col(text.render("TOP", jitter=False))) <= 1
    with pytest.raises(PromptError, match="OCR alphabet"):
        text.render("cat")


def test_tiny_text_model_tokenizes_letters_and_draws_32x64(tmp_path):
    cfg = ShapesModelConfig(task="text", resolution=32, width=64, channels=(8, 16), attention=(False, True),
                            text_dim=16, text_layers=1, heads=2)
    model = ShapesModel(cfg)
    ids = model.tokenizer(['a sign that says "AB"', ""])  # [2, 8]
    words = model.tokenizer.words
    assert [words[i - 2] for i in ids[0, :6].tolist()] == ["a", "sign", "that", "says", "A", "B"]
    assert ids[0, 6:].tolist() == [0, 0] and ids[1, 0].item() == 1  # padding; the empty prompt is NULL
    adapter = ShapesFlowAdapter(model)
    assert adapter.latent_shape == (3, 32, 64)
    images = PolicyGenerator(adapter, steps=2, guidance=1.0).generate(['a sign that says "AB"'], [0])
    assert images.shape == (1, 32, 64, 3)
    with pytest.raises(PromptError, match="OCR alphabet"):
        PolicyGenerator(adapter, steps=2).generate(['a sign that says "ab"'], [0])
    with pytest.raises(PromptError, match="OCR alphabet"):
        model.encode_prompts(['a sign that says "A1"'])
    with pytest.raises(ValueError, match="width 62 must be divisible by 2\\^2 = 4"):
        ShapesModelConfig(task="text", width=62, channels=(8, 16), attention=(False, True))
    with pytest.raises(ValueError, match="task 'words' is not one of shapes, text"):
        ShapesModelConfig(task="words")
    # a saved text model loads back with its task and size, and predicts the same
    torch.nn.init.normal_(model.unet.out.weight, std=0.1)  # the output layer starts at 0: make it predict something
    model.save_pretrained(tmp_path)
    again = ShapesModel.from_pretrained(tmp_path)
    assert again.config == cfg
    x, t = torch.randn(2, 3, 32, 64), torch.tensor([0.3, 0.9])
    prompts = ['a sign that says "AB"', 'a sign that says "ZOO"']
    with torch.no_grad():
        pred = model.eval()(x, t, model.encode_prompts(prompts))  # [2, 3, 32, 64]
        assert pred.abs().mean() > 0 and torch.equal(pred, again(x, t, again.encode_prompts(prompts)))
