import numpy as np
import pytest
import torch

from visalign.testbed.motion import grammar, render, verify
from visalign.testbed.motion.evaluate import OracleMotionGenerator, evaluate
from visalign.testbed.motion.grammar import PromptError, parse_prompt
from visalign.testbed.motion.render import Track, draw_clip
from visalign.testbed.motion.vocab import CATEGORIES, FRAMES, RESOLUTION, vocabulary
from visalign.testbed.world.geometry import gap


def _clip(*tracks: Track) -> np.ndarray:
    return draw_clip(list(tracks))  # [F, H, W, 3]


def _verdict(prompt: str, *tracks: Track) -> verify.MotionVerdict:
    return verify.verify_clip(_clip(*tracks), parse_prompt(prompt))


# ------------------------------------------------------------------------------------------------- grammar


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_prompt_round_trips_and_stays_in_the_vocabulary(category):
    vocab = set(vocabulary())
    for spec in grammar.all_specs(category):
        assert parse_prompt(spec.prompt) == spec and spec.category == category
        assert set(spec.prompt.split()) <= vocab


@pytest.mark.parametrize("prompt, category", [
    ("a red circle moving right", "direction"),
    ("a red circle moving left and a blue square moving up", "two_motions"),
    ("a green star moving quickly left", "speed"),
    ("an orange triangle moving slowly down", "speed"),
    ("a purple square staying still", "constancy"),
    ("a red circle turning green", "change"),
    ("three stars moving right", "counting"),
])
def test_examples_parse_to_their_category(prompt, category):
    spec = parse_prompt(prompt)
    assert spec.category == category and spec.prompt == prompt


@pytest.mark.parametrize("prompt", [
    "", "a red circle", "a red circle moving sideways", "a circle moving left", "a red circle moving",
    "a red circle turning red", "a red circle staying", "three stars moving quickly right", "three star moving up",
    "a red circle moving left and a blue circle moving up", "a red circle moving left and a red square moving up",
    "a red circle moving left and a blue square moving left", "a red circle moving left and a blue square",
    "a red circle moving left a blue square moving up", "a red circle moving left and",
])
def test_prompts_outside_the_grammar_fail_with_one_line(prompt):
    with pytest.raises(PromptError) as e:
        parse_prompt(prompt)
    assert "\n" not in str(e.value) and ("accepted" in str(e.value))


def test_vocabulary_and_constants_are_fixed():
    words = vocabulary()
    assert len(words) == len(set(words)) and words[:3] == ("a", "an", "and")
    assert FRAMES == 9 and (FRAMES - 1) % 4 == 0 and RESOLUTION == 32 and len(CATEGORIES) == 6


@pytest.mark.parametrize("category", CATEGORIES)
def test_held_out_scenes_are_never_trained_on(category):
    train, held = grammar.split_specs(category, "train"), grammar.split_specs(category, "eval")
    assert held and train and len(train) + len(held) == len(grammar.all_specs(category))
    assert not {s.canonical() for s in train} & {s.canonical() for s in held}
    assert 0.15 <= len({s.canonical() for s in held}) / len({s.canonical() for s in grammar.all_specs(category)}) <= 0.35
    assert grammar.prompts(category, "eval") == [s.prompt for s in held]
    with pytest.raises(ValueError, match="accepted: train, eval"):
        grammar.prompts(category, "test")


# -------------------------------------------------------------------------------------------------- render


@pytest.mark.parametrize("category", CATEGORIES)
def test_renders_keep_objects_inside_and_apart_in_every_frame(category):
    rng = np.random.default_rng(0)
    specs = grammar.all_specs(category)
    for _ in range(15):
        spec = specs[rng.integers(len(specs))]
        tracks = render.sample_tracks(spec, rng)
        assert len(tracks) == spec.n_objects
        for t in range(FRAMES):
            objs = [tr.at(t) for tr in tracks]
            assert all(0 <= o.box[0] and o.box[2] <= RESOLUTION and 0 <= o.box[1] and o.box[3] <= RESOLUTION for o in objs)
            assert all(gap(a.box, b.box) > 1 for i, a in enumerate(objs) for b in objs[i + 1:])
    clip = render.render_prompt(spec.prompt, np.random.default_rng(3))
    assert clip.shape == (FRAMES, RESOLUTION, RESOLUTION, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, render.render_prompt(spec.prompt, np.random.default_rng(3)))
    noisy = render.perturb_clip(clip, np.random.default_rng(0))
    assert noisy.shape == clip.shape and noisy.dtype == np.uint8 and not np.array_equal(noisy, clip)


def test_renders_at_other_resolutions_verify_too():
    rng = np.random.default_rng(0)
    for prompt in ("a green star moving quickly left", "four circles moving down", "a red square turning blue"):
        clip = render.render_clip(parse_prompt(prompt), rng, resolution=64)
        assert clip.shape == (FRAMES, 64, 64, 3) and verify.verify_clip(clip, parse_prompt(prompt)).exact
    with pytest.raises(ValueError, match="frames"):
        render.render_clip(parse_prompt("a green star moving quickly left"), rng, frames=17)


# ------------------------------------------------------------------------------------------- verifier rules


def test_direction_reads_the_velocity():
    left = Track("circle", "red", 24, 16, -1.5, 0, 10)
    assert _verdict("a red circle moving left", left).exact
    wrong = _verdict("a red circle moving right", left)
    assert not wrong.correct and wrong.partial == 0.5 and wrong.checks == {"red circle: present": True,
                                                                         "red circle: moving right": False}
    assert not _verdict("a red circle moving up", left).correct
    assert not _verdict("a red circle moving left", Track("circle", "red", 16, 16, 0, 0, 10)).correct  # still
    assert not _verdict("a blue circle moving left", left).correct  # wrong colour: not present


def test_two_motions_bind_each_motion_to_its_object():
    circle, square = Track("circle", "red", 24, 8, -1.5, 0, 10), Track("square", "blue", 8, 26, 0, -1.5, 10)
    assert _verdict("a red circle moving left and a blue square moving up", circle, square).exact
    swapped = _verdict("a red circle moving up and a blue square moving left", circle, square)
    assert not swapped.correct and swapped.partial == 0.5


def test_speed_bands_are_measured_in_pixels_per_frame():
    slow, quick = Track("star", "green", 24, 16, -1.0, 0, 10), Track("star", "green", 26, 16, -2.4, 0, 10)
    assert _verdict("a green star moving slowly left", slow).exact
    too_slow = _verdict("a green star moving quickly left", slow)
    assert not too_slow.correct and too_slow.checks["green star: moving left"] and too_slow.partial == pytest.approx(2 / 3)
    assert _verdict("a green star moving quickly left", quick).exact
    assert not _verdict("a green star moving slowly left", quick).correct
    between = Track("star", "green", 24, 16, -1.65, 0, 10)  # the gap between the bands is neither
    assert not _verdict("a green star moving slowly left", between).correct
    assert not _verdict("a green star moving quickly left", between).correct


def test_constancy_fails_a_flicker_a_shape_change_and_a_drift():
    still = Track("square", "purple", 16, 16, 0, 0, 10)
    assert _verdict("a purple square staying still", still).exact
    flicker = _clip(still)
    flicker[4] = draw_clip([Track("square", "green", 16, 16, 0, 0, 10)])[0]
    v = verify.verify_clip(flicker, parse_prompt("a purple square staying still"))
    assert not v.correct and not v.checks["purple square: purple in every frame"]
    assert v.checks["purple square: a square in every frame"] and v.checks["purple square: staying still"]
    morph = _clip(still)
    morph[6] = draw_clip([Track("circle", "purple", 16, 16, 0, 0, 10)])[0]
    assert not verify.verify_clip(morph, parse_prompt("a purple square staying still")).checks[
        "purple square: a square in every frame"]
    missing = _clip(still)
    missing[2] = 0
    assert not verify.verify_clip(missing, parse_prompt("a purple square staying still")).correct
    drift = _verdict("a purple square staying still", Track("square", "purple", 12, 16, 1.0, 0, 10))
    assert not drift.correct and not drift.checks["purple square: staying still"]


def test_change_needs_the_first_colour_then_the_second_once():
    turns = Track("circle", "red", 16, 16, 0, 0, 10, turns_to="green")
    assert _verdict("a red circle turning green", turns).exact
    never = _verdict("a red circle turning green", Track("circle", "red", 16, 16, 0, 0, 10))
    assert not never.correct and never.checks["red circle: red in the first third"] and never.checks["red circle: in every frame"]
    assert not never.checks["red circle: green in the last third"]
    assert not _verdict("a red circle turning blue", turns).correct
    assert not _verdict("a green circle turning red", turns).correct
    back = _clip(turns)
    back[6] = draw_clip([Track("circle", "red", 16, 16, 0, 0, 10)])[0]  # turns, then back for a frame
    v = verify.verify_clip(back, parse_prompt("a red circle turning green"))
    assert not v.correct and not v.checks["red circle: turning once"]


def test_counting_needs_the_count_in_every_frame():
    stars = [Track("star", c, 8, y, 1.0, 0, 10) for c, y in (("red", 6), ("blue", 18))]
    stars.append(Track("star", "green", 8, 30 - 5.5, 1.0, 0, 9.5))
    assert _verdict("three stars moving right", *stars).exact
    gone = _clip(*stars)
    gone[5] = draw_clip(stars[:2])[5]  # one star missing in frame 5
    v = verify.verify_clip(gone, parse_prompt("three stars moving right"))
    assert not v.correct and not v.checks["at least 3 stars in every frame"] and v.checks["at most 3 stars in every frame"]
    assert not _verdict("two stars moving right", *stars).correct  # GenEval's exclude: exactly N
    assert not _verdict("three stars moving left", *stars).correct


def test_an_extra_object_fails_the_exact_reading_not_the_lenient_one():
    asked, other = Track("circle", "red", 24, 8, -1.5, 0, 10), Track("triangle", "yellow", 16, 24, 0, 0, 10)
    v = _verdict("a red circle moving left", asked, other)
    assert v.correct and v.score == 1.0 and not v.exact and v.extra == 1
    assert v.partial == 1.0 and v.exact_partial == pytest.approx(2 / 3)
    blank = verify.verify_clip(np.zeros((FRAMES, 32, 32, 3), np.uint8), parse_prompt("a red circle moving left"))
    assert not blank.correct and blank.partial == 0.0 and blank.extra == 0
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        verify.verify_clip(np.zeros((32, 32, 3), np.uint8), parse_prompt("a red circle moving left"))


# --------------------------------------------------------------------------------- oracle, prompt set, reward


def test_oracle_reads_exactly_on_clean_and_nearly_on_perturbed_renders():
    clean = evaluate(OracleMotionGenerator(), per_category=25, seed=0)
    assert clean["n"] == 150 and set(clean["categories"]) == set(CATEGORIES)
    assert min(clean["categories"].values()) == 1.0 and min(clean["exact_categories"].values()) == 1.0, clean
    assert clean["extra"] == 0.0 and clean["partial"] == 1.0
    noisy = evaluate(OracleMotionGenerator(perturb=True), per_category=25, seed=1)
    assert min(noisy["categories"].values()) >= 0.96 and noisy["overall"] >= 0.99, noisy
    extra = evaluate(OracleMotionGenerator(distractors=1), per_category=10, seed=0, return_images=True)
    assert extra["overall"] == 1.0 and extra["exact"] < 0.8 and extra["extra"] > 0
    assert extra["images"].shape == (60, FRAMES, 32, 32, 3) and len(extra["prompts"]) == 60
    assert set(extra["readings"]) == {"geneval_rules", "exact", "extra", "lenient"}
    assert extra["readings"]["lenient"].sum() > 0


def test_prompt_set_loads_with_held_out_prompts():
    import visalign.testbed  # noqa: F401  (registers the prompt sets)
    from visalign.prompts import load_prompt_set

    ps = load_prompt_set("motion")
    assert ps.categories == list(CATEGORIES) and ps.verifier and ps.score_label == "GenEval-S Motion"
    for c in CATEGORIES:
        assert not set(ps.train[c]) & set(ps.eval[c])
    assert load_prompt_set("motion:speed,change").categories == ["speed", "change"]
    with pytest.raises(ValueError, match="accepted: direction"):
        load_prompt_set("motion:colors")


def test_reward_reads_videos_and_refuses_images():
    import visalign.testbed  # noqa: F401  (registers the rewards)
    from visalign.rewards.base import REWARDS

    prompts = ["a red circle moving right", "three stars moving up", "a blue square staying still"]
    clips = OracleMotionGenerator(distractors=1).generate(prompts, [0, 1, 2])  # [B, F, H, W, 3]
    videos = torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float() / 127.5 - 1  # [B, F, 3, H, W]
    reward = REWARDS.get("motion")()
    assert reward.video is True
    out = reward(videos, prompts)
    assert out.scores.shape == (3,) and set(out.details) == {"correct", "exact", "partial", "extra"}
    assert out.scores.tolist() == [1.0, 1.0, 1.0]
    exact = REWARDS.get("motion")(exact=True)(videos, prompts)
    assert exact.scores.tolist() == out.details["exact"].tolist() and exact.scores.sum() < 3
    dense = REWARDS.get("motion")(dense=True)(videos, ["a red circle moving left"] + prompts[1:])
    assert dense.scores[0] == 0.5 and dense.scores[1:].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="judges videos") as e:
        reward(videos[:, 0], prompts)
    assert "\n" not in str(e.value)
