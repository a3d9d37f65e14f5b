import numpy as np
import pytest

from visalign.world import grammar, render, verify
from visalign.world.geometry import relations
from visalign.world.grammar import parse_prompt
from visalign.world.render import SceneObject, draw
from visalign.world.vocab import CATEGORIES


def _accuracy(perturbed: bool, resolution: int = 32, n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = {}
    for c in CATEGORIES:
        specs = grammar.all_specs(c)
        ok = 0
        for _ in range(n):
            spec = specs[rng.integers(len(specs))]
            img = render.render(spec, rng, resolution)
            if perturbed:
                img = render.perturb(img, rng)
            ok += verify.verify(img, spec).correct
        out[c] = ok / n
    return out


@pytest.mark.parametrize("resolution", [32, 64])
def test_verifier_is_exact_on_clean_renders(resolution):
    acc = _accuracy(False, resolution)
    assert min(acc.values()) >= 0.98, acc


def test_verifier_is_robust_to_mild_blur_and_noise():
    acc = _accuracy(True)
    assert np.mean(list(acc.values())) >= 0.95 and min(acc.values()) >= 0.9, acc


def test_detects_shape_and_colour_of_each_object():
    objs = [SceneObject("star", "purple", 8, 8, 11), SceneObject("square", "yellow", 24, 24, 10)]
    dets = verify.detect(draw(objs, 32))
    assert sorted((d.shape, d.color) for d in dets) == [("square", "yellow"), ("star", "purple")]


def test_wrong_colour_count_and_position_fail_with_partial_credit():
    img = draw([SceneObject("circle", "red", 8, 16, 10), SceneObject("square", "blue", 24, 16, 10)], 32)
    assert verify.verify(img, parse_prompt("a red circle and a blue square")).correct
    wrong = verify.verify(img, parse_prompt("a green circle and a blue square"))
    assert not wrong.correct and 0 < wrong.partial < 1
    assert verify.verify(img, parse_prompt("a circle left of a square")).correct
    assert not verify.verify(img, parse_prompt("a circle right of a square")).correct
    assert not verify.verify(img, parse_prompt("two circles")).correct
    assert verify.verify(img, parse_prompt("a triangle")).partial == 0.0


def test_counting_excludes_one_too_many():
    objs = [SceneObject("star", "red", 8, 8, 10), SceneObject("star", "blue", 24, 8, 10),
            SceneObject("star", "green", 8, 24, 10)]
    img = draw(objs, 32)
    assert verify.verify(img, parse_prompt("three stars")).correct
    assert not verify.verify(img, parse_prompt("two stars")).correct  # GenEval: exactly N
    assert not verify.verify(img, parse_prompt("four stars")).correct


def test_blank_and_noise_images_hold_no_objects():
    assert verify.detect(np.zeros((32, 32, 3), np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    assert not verify.verify(noise, parse_prompt("a circle")).correct


def test_relations_follow_genevals_rule():
    a, b = (0, 0, 10, 10), (20, 0, 30, 10)
    assert relations(a, b) == {"left of"} and relations(b, a) == {"right of"}
    assert relations((0, 0, 10, 10), (0, 20, 10, 30)) == {"above"}
    # on a 45 degree diagonal both axes carry 10/17 > 1/2 of the offset after the 0.1 x (10 + 10) shrink
    assert relations((0, 0, 10, 10), (12, 12, 22, 22)) == {"left of", "above"}
    # an offset smaller than the shrink is no relation at all
    assert relations((0, 0, 10, 10), (1, 0, 11, 10)) == set()
    assert relations(a, a) == set()


def test_oracle_scores_through_evaluate():
    from visalign.evaluate import evaluate
    from visalign.models.registry import load_generator

    res = evaluate(load_generator("oracle"), per_category=20, seed=0)
    assert res["overall"] >= 0.99 and set(res["categories"]) == set(CATEGORIES) and res["n"] == 120
    noisy = evaluate(load_generator("oracle?blur=0.6&noise=0.04"), per_category=20, seed=0)
    assert noisy["overall"] >= 0.95
