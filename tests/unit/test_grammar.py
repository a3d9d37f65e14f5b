import numpy as np
import pytest

from visalign.testbed.world import grammar, render, verify
from visalign.testbed.world.grammar import PromptError, parse_prompt
from visalign.testbed.world.vocab import CATEGORIES


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_prompt_round_trips_prompt_spec_render_verify(category):
    rng = np.random.default_rng(0)
    for spec in grammar.all_specs(category):
        assert parse_prompt(spec.prompt) == spec
        assert spec.category == category
    # render + verify a sample of each category (every spec for the small ones)
    specs = grammar.all_specs(category)
    for spec in specs[:: max(1, len(specs) // 24)]:
        img = render.render(spec, rng, 32)
        v = verify.verify(img, spec)
        assert v.correct, (spec.prompt, v.reasons)
        assert v.partial == 1.0


@pytest.mark.parametrize(
    "prompt, category",
    [
        ("a triangle", "single_object"),
        ("a circle and a square", "two_object"),
        ("three stars", "counting"),
        ("a green square", "colors"),
        ("an orange circle", "colors"),
        ("a circle left of a triangle", "position"),
        ("a star below a square", "position"),
        ("a red circle and a blue square", "color_attr"),
    ],
)
def test_examples_parse_to_their_category(prompt, category):
    assert parse_prompt(prompt).category == category


def test_position_spec_places_first_object_relative_to_second():
    spec = parse_prompt("a circle left of a triangle")
    assert spec.relation == "left of"
    assert [o.shape for o in spec.objects] == ["circle", "triangle"]
    inc = spec.includes()
    assert inc[0].shape == "triangle" and inc[1].relation == "left of" and inc[1].target == 0


def test_unknown_word_names_it_and_the_vocabulary():
    with pytest.raises(PromptError) as e:
        parse_prompt("a pink circle")
    msg = str(e.value)
    assert "unknown word 'pink'" in msg and "purple" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "prompt, why",
    [
        ("a circle and a circle", "different shapes"),
        ("a red circle and a red square", "colours must differ"),
        ("two red circles", "plural shape"),
        ("a red circle left of a square", "without colours"),
        ("circle", "expected 'a'"),
        ("a red circle and a square", "both objects"),
        ("", "empty prompt"),
    ],
)
def test_prompts_outside_the_grammar_get_one_line(prompt, why):
    with pytest.raises(PromptError) as e:
        parse_prompt(prompt)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_splits_are_disjoint_fixed_and_cover_everything():
    for c in CATEGORIES:
        train, ev = grammar.prompts(c, "train"), grammar.prompts(c, "eval")
        assert ev and train and not set(train) & set(ev)
        assert sorted(train + ev) == sorted(s.prompt for s in grammar.all_specs(c))
        # the same scene in another word order never crosses the split
        tk = {s.canonical() for s in grammar.split_specs(c, "train")}
        ek = {s.canonical() for s in grammar.split_specs(c, "eval")}
        assert not tk & ek
        assert ev == grammar.prompts(c, "eval")  # fixed
