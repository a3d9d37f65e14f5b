import pytest
import torch

from visalign.math.advantages import PerPromptStatTracker, group_advantages
from visalign.math.losses import ppo_clip_loss


def test_group_advantages_hand_worked():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    a = group_advantages(r, 4, eps=0.0, clip=100)
    # group 1: mean 0.5, population std 0.5 -> +-1; group 2: mean 0.25, std sqrt(3)/4
    assert torch.allclose(a[:4], torch.tensor([1.0, -1.0, 1.0, -1.0]))
    s = 3**0.5 / 4
    assert torch.allclose(a[4:], torch.tensor([-0.25, -0.25, -0.25, 0.75]) / s)


def test_group_advantages_all_equal_group_is_zero_and_global_std():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0])
    a = group_advantages(r, 2, eps=1e-4)
    assert torch.equal(a[:2], torch.zeros(2))
    g = group_advantages(r, 2, global_std=True, eps=0.0)
    std = r.std(unbiased=False)  # 0.433
    assert torch.allclose(g, torch.tensor([0.0, 0.0, -0.5, 0.5]) / std)


def test_group_advantages_clip_and_bad_group():
    r = torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert group_advantages(r, 4, eps=1e-8, clip=1.5).max() == 1.5
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        group_advantages(r, 3)


def test_per_prompt_tracker_uses_batch_stats_until_min_count():
    t = PerPromptStatTracker(buffer_size=4, min_count=3, eps=0.0)
    a = t.update(["p", "p", "q", "q"], torch.tensor([1.0, 0.0, 2.0, 0.0]))
    # buffers too small -> batch mean 0.75, std 0.829
    b = torch.tensor([1.0, 0.0, 2.0, 0.0])
    assert torch.allclose(a, (b - b.mean()) / b.std(unbiased=False))
    a2 = t.update(["p", "p"], torch.tensor([1.0, 1.0]))
    # p's buffer is [1, 0, 1, 1]: mean 0.75, std 0.433
    assert torch.allclose(a2, torch.tensor([0.25, 0.25]) / torch.tensor([1.0, 0, 1, 1]).std(unbiased=False))
    state = t.state_dict()
    t2 = PerPromptStatTracker(buffer_size=4, min_count=3, eps=0.0)
    t2.load_state_dict(state)
    assert torch.equal(t2.update(["p"], torch.tensor([0.0])), t.update(["p"], torch.tensor([0.0])))


def test_ppo_clip_loss_hand_worked():
    lp_old = torch.zeros(4)
    lp = torch.log(torch.tensor([1.5, 1.5, 0.5, 1.0]))
    adv = torch.tensor([1.0, -1.0, 1.0, 2.0])
    loss, ratio = ppo_clip_loss(lp, lp_old, adv, clip_range=0.2)
    # A>0, r=1.5: max(-1.5, -1.2) = -1.2 (clipped, no gain past 1+c)
    # A<0, r=1.5: max(1.5, 1.2) = 1.5 (unclipped, the pessimistic side)
    # A>0, r=0.5: max(-0.5, -0.8) = -0.5
    # r=1: -A
    assert torch.allclose(loss, torch.tensor([-1.2, 1.5, -0.5, -2.0]))
    assert torch.allclose(ratio, torch.tensor([1.5, 1.5, 0.5, 1.0]))


def test_ppo_gradient_on_policy_is_minus_advantage_times_score():
    lp = torch.zeros(3, requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    loss, _ = ppo_clip_loss(lp, lp.detach(), adv, clip_range=1e-4)
    loss.sum().backward()
    assert torch.allclose(lp.grad, -adv)


def test_grpo_windows_random_and_sliding():
    import torch

    from visalign.algorithms import load_algorithm
    from visalign.policies import FlowSampling

    base = FlowSampling(steps=6, kind="flow")
    slide = load_algorithm("grpo", {"window": "sliding", "window_size": 2, "window_shift_every": 2})
    starts = [slide.rollout_sampling(base, it, None).sde_window for it in range(1, 12)]
    # moves one step every 2 iterations from the noisiest end, wrapping after 5 positions
    assert starts[:6] == [(0, 2), (0, 2), (1, 3), (1, 3), (2, 4), (2, 4)] and starts[10] == (0, 2)
    rnd = load_algorithm("grpo", {"window": "random", "window_size": 3})
    wins = {rnd.rollout_sampling(base, 1, torch.Generator().manual_seed(s)).sde_window for s in range(40)}
    assert wins == {(0, 3), (1, 4), (2, 5), (3, 6)}
    assert load_algorithm("grpo", {}).rollout_sampling(base, 3, None) is base
    with pytest.raises(ValueError, match="window_size=7 is larger than sampling.steps=6"):
        load_algorithm("grpo", {"window": "random", "window_size": 7}).rollout_sampling(base, 1, torch.Generator())
    # inside the sampler's own stochastic steps [1, 4): one-step windows land on 1, 2 or 3 only
    early = FlowSampling(steps=6, kind="flow", sde_window=(1, 4))
    one = load_algorithm("grpo", {"window": "random", "window_size": 1})
    assert {one.rollout_sampling(early, 1, torch.Generator().manual_seed(s)).sde_window for s in range(40)} == \
        {(1, 2), (2, 3), (3, 4)}
    slide1 = load_algorithm("grpo", {"window": "sliding", "window_size": 1})
    assert [slide1.rollout_sampling(early, it, None).sde_window for it in (1, 2, 3, 4)] == [(1, 2), (2, 3), (3, 4), (1, 2)]
    with pytest.raises(ValueError, match=r"window_size=4 is larger than sampling.sde_window=\(1, 4\)"):
        load_algorithm("grpo", {"window": "random", "window_size": 4}).rollout_sampling(early, 1, torch.Generator())


def test_best_worst_rows_hand_worked():
    from visalign.math.advantages import best_worst_rows

    r = torch.tensor([0.1, 0.9, 0.5, 0.3, 1.0, 1.0, 0.0, 0.0])
    # group 0: best 1 (0.9), worst 0 (0.1); group 1 ties keep index order: best 4, worst 7
    assert best_worst_rows(r, 4, 1).tolist() == [0, 1, 4, 7]
    # group of 6, k = 2: best 2 (0.8, 0.7), worst 2 (0.2, 0.1)
    r6 = torch.tensor([0.2, 0.8, 0.5, 0.1, 0.7, 0.4])
    assert best_worst_rows(r6, 6, 2).tolist() == [0, 1, 3, 4]
    for k in (0, 2, 3):  # nothing kept, or the whole group of 4 (no subsampling)
        with pytest.raises(ValueError, match="2k < group_size"):
            best_worst_rows(r, 4, k)


def test_best_worst_selection_is_the_same_on_two_processes_as_on_one():
    """Each process keeps the global extremes inside its shard: the union over shards is one process's set."""
    from types import SimpleNamespace

    from visalign.trainer.trainer import Trainer
    from visalign.types import Trajectory

    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(16, generator=g)  # 4 groups of 4
    adv = torch.randn(16, generator=g)

    def traj(rows):
        n = len(rows)
        return Trajectory(prompts=[f"p{r // 4}" for r in rows], seeds=list(rows), states=torch.tensor(rows).float()[:, None],
                          log_probs=torch.zeros(n, 1), sigmas=torch.zeros(2), stochastic=torch.zeros(1, dtype=torch.bool),
                          images=torch.zeros(n, 3, 2, 2))

    fake = SimpleNamespace(cfg=SimpleNamespace(group_size=4, keep_best_worst=1))
    one, a1 = Trainer.best_worst(fake, traj(list(range(16))), rewards, adv, slice(0, 16))
    parts = [Trainer.best_worst(fake, traj(list(range(s, s + 8))), rewards, adv, slice(s, s + 8)) for s in (0, 8)]
    assert one.seeds == parts[0][0].seeds + parts[1][0].seeds
    assert torch.equal(a1, torch.cat([parts[0][1], parts[1][1]]))
    assert len(one) == 8 and one.extras["group_size"] == 2
