import numpy as np
import pytest

from visalign.testbed.world import grammar, render, verify
from visalign.testbed.world.geometry import relations
from visalign.testbed.world.grammar import parse_prompt
from visalign.testbed.world.render import SceneObject, draw
from visalign.testbed.world.vocab import CATEGORIES


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
    from visalign.testbed.evaluate import evaluate
    from visalign.models.registry import load_generator

    res = evaluate(load_generator("oracle"), per_category=20, seed=0)
    assert res["overall"] >= 0.99 and set(res["categories"]) == set(CATEGORIES) and res["n"] == 120
    noisy = evaluate(load_generator("oracle?blur=0.6&noise=0.04"), per_category=20, seed=0)
    assert noisy["overall"] >= 0.95


# ------------------------------------------------------------------------------------------ the exact reading

def _bar(img: np.ndarray, color=(255, 200, 0), box=(2, 26, 14, 29)) -> np.ndarray:
    """A flat 12x3 px bar (aspect 4): above the size floor, no shape of the world -> an 'unknown' blob."""
    out = img.copy()
    x0, y0, x1, y1 = box
    out[y0:y1, x0:x1] = color
    return out


def test_an_extra_object_passes_genevals_rules_and_fails_the_exact_reading():
    asked = SceneObject("square", "red", 9, 9, 11)
    alone = verify.verify(draw([asked], 32), parse_prompt("a square"))
    assert alone.correct and alone.exact and alone.extra == 0 and alone.stray == 0.0
    extra = verify.verify(draw([asked, SceneObject("circle", "yellow", 23, 23, 11)], 32), parse_prompt("a square"))
    assert extra.correct and not extra.exact  # GenEval lets the circle in; the exact reading does not
    assert extra.extra == 1
    assert extra.stray == pytest.approx(sum(d.area for d in extra.detections if d.shape == "circle") / 32**2)
    # counting: a third star beside "two stars" fails both readings (GenEval's exclude), a circle only the exact one
    stars = [SceneObject("star", "red", 8, 8, 11), SceneObject("star", "blue", 24, 8, 11)]
    assert verify.verify(draw(stars, 32), parse_prompt("two stars")).exact
    v = verify.verify(draw(stars + [SceneObject("circle", "green", 16, 24, 10)], 32), parse_prompt("two stars"))
    assert v.correct and not v.exact and v.extra == 1


def test_unknown_blobs_pass_genevals_rules_and_fail_the_exact_reading():
    img = _bar(draw([SceneObject("triangle", "blue", 16, 10, 12)], 32))
    assert [d.shape for d in verify.detect(img)] == ["triangle", "unknown"]
    v = verify.verify(img, parse_prompt("a triangle"))
    assert v.correct and not v.exact and v.extra == 1
    assert v.stray == pytest.approx(36 / 32**2)  # the bar's 12 x 3 pixels
    # a speck below the size floor is no object: the exact reading holds, the stray area still counts it
    speck = draw([SceneObject("triangle", "blue", 16, 10, 12)], 32)
    speck[28:30, 28:30] = (255, 200, 0)
    v = verify.verify(speck, parse_prompt("a triangle"))
    assert v.exact and v.extra == 0 and v.stray == pytest.approx(4 / 32**2)


def test_extra_counts_objects_beyond_the_named_number_not_wrong_ones():
    # a wrong shape in the named one's place is a failed check, not an extra object
    v = verify.verify(draw([SceneObject("circle", "red", 16, 16, 11)], 32), parse_prompt("a square"))
    assert not v.correct and not v.exact and v.extra == 0
    assert v.stray == pytest.approx(v.detections[0].area / 32**2)  # no named object matched: all of it is stray
    # partial credit of the exact reading: GenEval's checks plus "no extra object"
    two = verify.verify(draw([SceneObject("circle", "red", 8, 16, 10), SceneObject("square", "blue", 24, 16, 10)], 32),
                        parse_prompt("a green circle"))
    assert two.partial == 0.5 and two.extra == 1 and two.exact_partial == pytest.approx(1 / 3)


def test_exact_reading_holds_on_clean_renders():
    rng = np.random.default_rng(1)
    for c in CATEGORIES:
        specs = grammar.all_specs(c)
        for _ in range(30):
            spec = specs[rng.integers(len(specs))]
            v = verify.verify(render.render(spec, rng, 32), spec)
            assert v.exact and v.extra == 0, (spec.prompt, v.reasons)
