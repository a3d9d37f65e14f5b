"""The hacking monitor: a run's held-out samples judged by more than the reward it trains on.

A policy optimises the reward it is given, not what the reward stands for. Trained on GenEval's rules, which
let other objects into an image, a policy learns to draw them; trained on one OCR reading, it can learn what
fools that reading. The survey this library follows names this reward hacking as the field's open problem;
Flow-GRPO and DPOK hold it back with a KL term. Here every evaluation scores the same held-out images
(same prompts, same seeds) by
- the training reward (`reward`),
- the readings the prompt set's evaluator has of its own (`PromptSet.readings`; GenEval-S: GenEval's rules, the
  exact reading, extra objects per image, and the images that pass GenEval's rules only with objects nobody asked
  for), and
- judges: other rewards named by the recipe's `eval.judges`, with defaults per prompt set (`default_judges`:
  `PromptSet.judges`, then by the reward).
When the training reward rises beyond the evaluation's noise while a reading or a judge falls beyond it, the
run says so in one line (`hacking_warning`). Noise: the change is paired (same prompts and seeds at every
evaluation), so its standard error is that of the per-image differences; "beyond" is `Z` of them.
"""

from __future__ import annotations

import math

import numpy as np

from .registry import split_spec

Z = 2.0  # standard errors of a paired change that count as beyond the evaluation's noise

# Learned preference rewards: each is judged by another one (DDPO's and Flow-GRPO's hacking checks).
_LEARNED = ("clip_score", "pickscore", "hps", "aesthetic", "image_reward")
# The `ocr` reward's second, independent reading: one word (no line finder) on a binarised, upscaled, cropped image.
OCR_SECOND_READING = "ocr?psm=8&preprocess=otsu-crop"


def same_reward(spec: str, name: str, options: dict) -> bool:
    """Whether a reward spec names the reward `name` with `options` (the training reward)."""
    judge, judge_options = split_spec(spec)
    return judge == name and judge_options == dict(options or {})


def default_judges(prompt_set: str, reward: str, reward_options: dict | None = None) -> list[str]:
    """The judges a run gets when its recipe names none: rewards it did not train on that measure what its
    reward stands for. A registered prompt set's own (PromptSet.judges; GenEval-S: the learned GenEval-S reward,
    its verifier's readings being watched anyway; text: the two OCR readings); else by the reward: a learned
    preference reward: another one (CLIP score, or PickScore for a CLIP score run); JPEG compressibility (which
    blurs its way up): the aesthetic predictor."""
    from .prompts import PROMPT_SETS, load_prompt_set

    own = list(load_prompt_set(prompt_set).judges) if prompt_set.split(":", 1)[0] in PROMPT_SETS else []
    if own:
        candidates = own
    elif reward in _LEARNED:
        candidates = ["pickscore" if reward == "clip_score" else "clip_score"]
    elif reward in ("compressibility", "incompressibility"):
        candidates = ["aesthetic"]
    else:
        candidates = []
    return [j for j in candidates if not same_reward(j, reward, reward_options or {})]


def paired_change(base: np.ndarray, now: np.ndarray) -> tuple[float, float]:
    """Mean change of a per-image score between two evaluations of the same prompts and seeds, and its
    standard error (that of the mean of the per-image differences). base, now: [N]."""
    if base.shape != now.shape:
        raise ValueError(f"the evaluations differ in size ({base.shape[0]} vs {now.shape[0]} images); "
                         "compare evaluations of the same prompts and seeds")
    d = now.astype(np.float64) - base.astype(np.float64)  # [N]
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.inf
    return float(d.mean()), se


def hacking_warning(base: dict[str, np.ndarray], now: dict[str, np.ndarray], labels: dict[str, str],
                    z: float = Z, lower_is_better: tuple[str, ...] = ()) -> str | None:
    """One line when the training reward (series "reward") rose by more than z standard errors while any
    other series got worse by more than z of its own; else None. base / now: series name -> per-image
    scores [N] of the same images; series in lower_is_better (a prompt set's, PromptSet.lower_is_better) get
    worse by rising."""
    rise, se = paired_change(base["reward"], now["reward"])
    if not rise > z * se:
        return None
    worse = []
    for name in now:
        if name == "reward" or name not in base:
            continue
        change, se_j = paired_change(base[name], now[name])
        sign = -1.0 if name in lower_is_better else 1.0
        if sign * change < -z * se_j:
            verb = "rose" if sign < 0 else "fell"
            worse.append(f"{labels.get(name, name)} {verb} {base[name].mean():.3f} -> {now[name].mean():.3f} "
                         f"({change:+.3f} +- {se_j:.3f})")
    if not worse:
        return None
    return (f"reward hacking: on held-out prompts the training reward rose {base['reward'].mean():.3f} -> "
            f"{now['reward'].mean():.3f} ({rise:+.3f} +- {se:.3f}) while " + "; ".join(worse)
            + f" (changes beyond {z:g} standard errors of the paired difference)")


def summary_lines(first: dict, last: dict, label: str) -> list[str]:
    """The console's before -> after of a run from two evaluation records (metrics.jsonl): the score it is
    evaluated by, the exact reading and extra objects where the prompt set has them, the training reward
    and each judge, and the hacking warning if the last evaluation raised it."""
    arrow = lambda key: f"{first[key]:.3f} -> {last[key]:.3f}"  # noqa: E731
    rules = " (GenEval's rules)" if "eval_exact" in last else ""
    lines = [f"held-out {label}{rules}: {arrow('eval_overall')}"]
    if "eval_exact" in last:
        lines.append(f"held-out exact reading: {arrow('eval_exact')}; extra objects per image: {arrow('eval_extra')}")
    same = lambda key: key in last and all(abs(r["eval_reward"] - r[key]) < 1e-6 for r in (first, last))  # noqa: E731
    if "eval_reward" in first and "eval_reward" in last and not same("eval_overall") and not same("eval_exact"):
        lines.append(f"held-out training reward: {arrow('eval_reward')}")  # a reward other than the score above
    for spec, value in last.get("eval_judges", {}).items():
        before = first.get("eval_judges", {}).get(spec, float("nan"))
        lines.append(f"held-out judge {spec}: {before:.3f} -> {value:.3f}")
    if last.get("eval_hacking"):
        lines.append(f"warning: {last['eval_hacking']}")
    return lines
