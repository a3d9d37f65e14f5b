"""The hacking monitor (visalign/monitor.py): the paired change and its noise by hand, the warning on verifier
readings of real renders, default judges per prompt set."""

import json
from pathlib import Path

import numpy as np
import pytest

from visalign import monitor
from visalign.testbed.evaluate import LOWER_IS_BETTER, READINGS, readings
from visalign.testbed.world import grammar, verify
from visalign.testbed.world.render import SceneObject, draw


def test_paired_change_is_the_mean_difference_and_its_standard_error():
    base, now = np.array([0.0, 1.0, 0.0, 1.0]), np.array([1.0, 1.0, 1.0, 0.0])
    change, se = monitor.paired_change(base, now)
    # differences 1, 0, 1, -1: mean 0.25, sample std sqrt(((.75)^2 + (.25)^2 + (.75)^2 + (1.25)^2) / 3) = 0.9574
    assert change == pytest.approx(0.25)
    assert se == pytest.approx(0.957427 / 2, rel=1e-5)
    with pytest.raises(ValueError, match="same prompts and seeds"):
        monitor.paired_change(base, now[:3])


def _series(images, specs, train: str) -> dict[str, np.ndarray]:
    """The monitor's series of a batch of images: the verifier's readings, the training reward being one."""
    out = readings([verify.verify(img, s) for img, s in zip(images, specs)])
    return {"reward": out[train], **out}


def _renders(n: int, extra: bool, wrong: bool, seed: int = 0):
    """n renders of 'a square': `wrong` draws a circle instead in every other image, `extra` adds a yellow
    circle beside the square in every image that is not wrong."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        size = rng.uniform(9, 11)
        if wrong and i % 2:
            images.append(draw([SceneObject("circle", "red", 9, 9, size)], 32))
        else:
            objs = [SceneObject("square", "red", 9, 9, size)]
            objs += [SceneObject("circle", "yellow", 23, 23, 10)] if extra else []
            images.append(draw(objs, 32))
    return images, [grammar.parse_prompt("a square")] * n


def test_warning_fires_when_the_reward_rises_by_adding_objects_nobody_asked_for():
    base = _series(*_renders(60, extra=False, wrong=True), train="geneval_rules")  # rules 0.5, exact 0.5
    hacked = _series(*_renders(60, extra=True, wrong=False), train="geneval_rules")  # rules 1.0, exact 0.0
    line = monitor.hacking_warning(base, hacked, {"reward": "the training reward", **READINGS}, lower_is_better=LOWER_IS_BETTER)
    assert line is not None and "\n" not in line
    assert "the training reward rose 0.500 -> 1.000" in line
    assert "the exact reading fell 0.500 -> 0.000" in line and "extra objects per image rose 0.000 -> 1.000" in line


def test_warning_stays_quiet_when_every_reading_rises_or_the_reward_does_not():
    base = _series(*_renders(60, extra=False, wrong=True), train="exact")
    honest = _series(*_renders(60, extra=False, wrong=False), train="exact")  # rules and exact 0.5 -> 1.0
    assert monitor.hacking_warning(base, honest, READINGS, lower_is_better=LOWER_IS_BETTER) is None
    # the exact reading as the training reward falls with the extra objects: no rise, no hacking warning
    hacked = _series(*_renders(60, extra=True, wrong=False), train="exact")
    assert monitor.hacking_warning(base, hacked, READINGS, lower_is_better=LOWER_IS_BETTER) is None


def test_a_fall_within_the_noise_is_not_reported():
    rng = np.random.default_rng(0)
    base = {"reward": rng.random(300) < 0.5, "judge": rng.random(300) < 0.5}
    now = {"reward": np.ones(300, bool), "judge": base["judge"].copy()}
    now["judge"][np.flatnonzero(now["judge"])[:3]] = False  # 3 of 300 images worse: -0.01, se ~0.006
    base, now = ({k: v.astype(float) for k, v in d.items()} for d in (base, now))
    change, se = monitor.paired_change(base["judge"], now["judge"])
    assert change == pytest.approx(-0.01) and -change < monitor.Z * se
    assert monitor.hacking_warning(base, now, {}) is None
    now["judge"][np.flatnonzero(now["judge"])[:30]] = False  # 33 worse: well beyond two standard errors
    assert "judge fell" in monitor.hacking_warning(base, now, {})


def test_default_judges_per_prompt_set_leave_out_the_training_reward():
    assert monitor.default_judges("geneval-s", "geneval_s") == ["geneval_s_learned"]
    assert monitor.default_judges("geneval-s:colors", "geneval_s_learned") == []
    assert monitor.default_judges("text", "ocr") == [monitor.OCR_SECOND_READING]
    assert monitor.default_judges("animals", "pickscore") == ["clip_score"]
    assert monitor.default_judges("animals", "clip_score") == ["pickscore"]
    assert monitor.default_judges("animals", "compressibility") == ["aesthetic"]
    assert monitor.same_reward("geneval_s?exact=true", "geneval_s", {"exact": True})
    assert not monitor.same_reward("geneval_s", "geneval_s", {"exact": True})


def test_renders_are_what_the_helpers_say():
    images, specs = _renders(4, extra=True, wrong=True)
    r = readings([verify.verify(img, s) for img, s in zip(images, specs)])
    assert r["geneval_rules"].tolist() == [1, 0, 1, 0] and r["exact"].tolist() == [0, 0, 0, 0]
    assert r["extra"].tolist() == [1, 0, 1, 0]


# Per-image scores of real runs (benchmarks/reward_hacking.py, seed 0): the base model's evaluation and the last
# one, rounded to 4 decimals. The old default (trained on GenEval's rules) hacks them; the recipe as it stands
# (trained on the exact reading) does not.
DATA = Path(__file__).resolve().parent.parent / "data" / "hacking"


@pytest.mark.parametrize("arm, warns", [("rules-kl0.001", True), ("default", False)])
def test_the_warning_on_recorded_runs(arm, warns):
    base, now = (json.loads((DATA / f"{arm}-seed0-iter-{it:06d}.json").read_text()) for it in (0, 640))
    assert base["prompts"] == now["prompts"] and len(base["prompts"]) == 300
    series = [{k: np.asarray(v) for k, v in e["series"].items()} for e in (base, now)]
    assert all(np.array_equal(s["lenient"], s["geneval_rules"] - s["exact"]) for s in series)
    line = monitor.hacking_warning(*series, READINGS, lower_is_better=LOWER_IS_BETTER)
    if warns:
        # GenEval's rules 0.520 -> 0.777 while the passes that need extra objects rose 0.080 -> 0.237
        assert line is not None and "images that pass GenEval's rules only with objects nobody asked for rose" in line
        assert series[1]["geneval_rules"].mean() > series[0]["geneval_rules"].mean()
    else:
        assert line is None
        for name in ("geneval_rules", "exact"):  # both readings rose, extra objects fell
            assert series[1][name].mean() > series[0][name].mean()
        assert series[1]["extra"].mean() <= series[0]["extra"].mean()


def test_console_summary_names_both_readings_and_shows_the_training_reward_only_when_it_is_another_score():
    first = {"eval_overall": 0.52, "eval_exact": 0.44, "eval_extra": 0.193, "eval_reward": np.float32(0.44).item(),
             "eval_judges": {"geneval_s_learned": 0.508}}
    last = {"eval_overall": 0.793, "eval_exact": 0.787, "eval_extra": 0.013, "eval_reward": np.float32(0.787).item(),
            "eval_judges": {"geneval_s_learned": 0.638}, "eval_hacking": "reward hacking: ..."}
    lines = monitor.summary_lines(first, last, "GenEval-S")
    assert lines == ["held-out GenEval-S (GenEval's rules): 0.520 -> 0.793",
                     "held-out exact reading: 0.440 -> 0.787; extra objects per image: 0.193 -> 0.013",
                     "held-out judge geneval_s_learned: 0.508 -> 0.638", "warning: reward hacking: ..."]
    first["eval_reward"], last["eval_reward"] = 0.3, 0.6  # e.g. a combined reward: its own line
    assert "held-out training reward: 0.300 -> 0.600" in monitor.summary_lines(first, last, "GenEval-S")
