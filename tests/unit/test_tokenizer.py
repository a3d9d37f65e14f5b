import pytest
import torch

from visalign.testbed.models.text import NULL, PAD, TextEncoder, WordTokenizer
from visalign.testbed.world.grammar import PromptError


def test_encodes_words_pads_and_null_prompt():
    tok = WordTokenizer()
    ids = tok(["a red circle", ""])
    assert ids.shape == (2, tok.max_length)
    assert ids[0, 3:].eq(PAD).all() and ids[0, :3].ne(PAD).all()
    assert ids[1, 0] == NULL and ids[1, 1:].eq(PAD).all()
    assert tok.encode("A  Red Circle") == tok.encode("a red circle")


def test_unknown_word_error_names_word_and_vocabulary():
    with pytest.raises(PromptError) as e:
        WordTokenizer().encode("a red dog")
    assert "unknown word 'dog'" in str(e.value) and "circle" in str(e.value) and "\n" not in str(e.value)


def test_too_long_prompt_names_the_limit():
    with pytest.raises(PromptError, match="at most 3"):
        WordTokenizer(max_length=3).encode("a red circle and")


def test_text_encoder_ignores_padding():
    torch.manual_seed(0)
    tok = WordTokenizer()
    enc = TextEncoder(tok.vocab_size, dim=32, layers=1, heads=2).eval()
    ids = tok(["a red circle"])
    h, pooled, mask = enc(ids)
    with torch.no_grad():
        enc.embed.weight[PAD] += 10.0  # what sits in padded slots must not reach the real tokens
    h2, pooled2, _ = enc(ids)
    assert mask.sum() == 3
    assert torch.allclose(pooled, pooled2, atol=1e-5) and torch.allclose(h[mask], h2[mask], atol=1e-5)
