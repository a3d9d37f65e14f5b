"""Gradient-signal diagnostics: how much of an update is signal, and where the rollouts carry it.

A policy-gradient estimate from B rollouts is g = s + n, the true gradient s plus noise n whose variance
falls as 1/B. Two estimates from disjoint rollouts share s and have independent noise, so their cosine
c = |s|^2 / (|s|^2 + |n|^2) (in expectation, for large dimension) is the *signal share* of one of them.
An estimate from the union of the two (twice the rollouts) has share 2c / (1 + c). Adam takes steps of
about `lr` per coordinate whatever that share is, so at a share of 0.05 almost all of each step is a
random walk; over K steps the signal adds up K times and the noise sqrt(K) times (run_share), which is
what decides whether a run can learn (issue 9). One cosine of a raw gradient scatters by about +-0.2 (a
few parameter directions dominate it), so single estimates are averaged before anything is concluded.

Also: the share of groups whose rewards are all equal (they carry no GRPO signal at all), the reward
variance within groups (what group advantages can use) and between them (prompt difficulty, which
they remove), and the effective sample size of the advantage weights.
"""

from __future__ import annotations

import math

import torch

WINDOW_NAMES = ("early", "mid", "late")
# What `visalign diagnose` averages over its batches beside the signal shares (reward_stats, advantage_ess).
BATCH_STATS = ("reward_mean", "diag_equal_groups", "diag_var_within", "diag_var_between", "diag_ess")


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two flat vectors; 0 when either is zero (no direction, no shared signal)."""
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


def combined_share(cos: float, k: int = 2) -> float:
    """Signal share of the mean of k estimates, each with share `cos` (noise variance falls as 1/k)."""
    c = max(cos, 0.0)
    return k * c / (1 + (k - 1) * c) if c > 0 else 0.0


def snr(share: float) -> float:
    """Signal-to-noise power ratio of an estimate whose signal share is `share` in [0, 1]."""
    return share / (1 - share) if share < 1 else math.inf


def batch_multiplier(share: float, target: float = 0.5) -> float:
    """How many times more rollouts per update would lift `share` to `target` (snr grows linearly)."""
    if share <= 0:
        return math.inf
    return max(1.0, snr(target) / snr(share))


def reward_stats(rewards: torch.Tensor, group_size: int) -> dict:
    """rewards [B] in consecutive groups -> share of all-equal groups, within/between-group variance."""
    r = rewards.float().view(-1, group_size)  # [G, n]
    spread = r.max(1).values - r.min(1).values  # [G]
    return {
        "diag_equal_groups": float((spread <= 1e-8).float().mean()),
        "diag_var_within": float(r.var(1, unbiased=False).mean()),
        "diag_var_between": float(r.mean(1).var(unbiased=False)) if r.shape[0] > 1 else 0.0,
    }


def advantage_ess(advantages: torch.Tensor) -> float:
    """Effective share of samples carrying weight, (sum |A|)^2 / (B sum A^2) in [0, 1]; 0 if all A == 0."""
    a = advantages.float().abs()  # [B]
    sq = float((a * a).sum())
    return float(a.sum()) ** 2 / (a.numel() * sq) if sq > 0 else 0.0


def window_name(i: int, n: int) -> str:
    return WINDOW_NAMES[i] if n == 3 else f"w{i}"


def run_share(update_share: float, steps: int) -> float:
    """Signal share of the sum of `steps` updates of share `update_share` each: the signal adds up linearly
    over steps, independent noise only as a random walk (square root), so the snr grows with the steps."""
    if update_share <= 0:
        return 0.0
    if update_share >= 1:
        return 1.0
    total = steps * snr(update_share)
    return total / (1 + total)


def upper_cosine(cosines: list[float], z: float = 2.0, min_count: int = 3) -> float | None:
    """An upper confidence bound (mean + z standard errors) of the mean of several noisy cosine estimates;
    None with fewer than `min_count` of them. At a few % signal one half-batch split is mostly noise, so
    the in-run warning waits for evidence that the share is low, not for one unlucky split."""
    if len(cosines) < min_count:
        return None
    c = torch.tensor(cosines, dtype=torch.float64)
    return float(c.mean() + z * c.std(unbiased=True) / math.sqrt(len(cosines)))


def low_signal_warning(update_share: float, steps: int, lr: float, threshold: float,
                       bound: bool = False) -> str | None:
    """One line when the run's accumulated update (over `steps` optimizer steps) is mostly noise, with what
    would fix it; None otherwise. `threshold` applies to run_share; `bound`: update_share is an upper bound."""
    run = run_share(update_share, steps)
    if run >= threshold:
        return None
    want = snr(threshold) / steps  # per-update snr that reaches the threshold over the run
    k = batch_multiplier(update_share, want / (1 + want))
    more = ("no measurable signal" if math.isinf(k)
            else f"about {k:.0f}x the rollouts per update would reach {threshold}")
    at_most = "at most " if bound else ""
    return (f"warning: gradient signal share {at_most}{update_share:.3f} per update, {at_most}{run:.2f} over the run's "
            f"{steps} optimizer steps at lr={lr:g} (< {threshold}): the run is mostly a random walk ({more}); "
            f"raise train.batch_size, "
            f"or take more optimizer steps at a lower train.lr (signal adds up over steps, noise as their square root)")


def rounded(res: dict, digits: int = 4) -> dict:
    """`visalign diagnose`'s numbers as it prints them and writes them (--out): floats to `digits` significant
    digits, an infinite one (no signal: no batch size reaches half) as None; ints and strings as they are."""
    def one(v):
        if isinstance(v, float):
            return float(f"{v:.{digits}g}") if math.isfinite(v) else None
        return v

    return {k: one(v) for k, v in res.items()}


def signal_summary(res: dict, name: str, lr: float) -> list[str]:
    """The lines `visalign diagnose` prints from rounded(res): every number under the name it has in the JSON,
    then one sentence read from the same numbers, then the warning if any."""
    lines = [f"{name}: {res['batches']} independent batches of {res['batch_size']} rollouts, lr={lr:g}"]
    lines += [f"  {k:<24} {'none' if v is None else v}" for k, v in res.items() if k != "warning"]
    half = res["batch_for_half_signal"]
    more = (f"batch_for_half_signal {half} rollouts per update would make it 0.5" if half is not None
            else "no batch size would make it 0.5 (no measurable signal)")
    lines.append(f"signal_share {res['signal_share']} per update; {more}; run_signal_share {res['run_signal_share']} "
                 f"over the run's {res['optimizer_steps']} optimizer steps")
    if res.get("warning"):
        lines.append(res["warning"])
    return lines
