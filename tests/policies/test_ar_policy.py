"""AutoregressivePolicy on a tiny random token GPT + VQ built from configs: the ratio invariant with CFG,
temperature, top-k and the plan on; KV cache == full forward; seeded, batch-independent draws; the plan
grammar; GRPO's loss and KL on token steps; bad input as one-line errors."""

import math

import pytest
import torch

from visalign.testbed.models.ar import ARConfig, ShapesARAdapter, TokenGPT
from visalign.testbed.models.vq import VQConfig, VQVAE
from visalign.policies import make_policy
from visalign.policies.autoregressive import ARSampling, AutoregressivePolicy, inverse_cdf, token_log_probs
from visalign.testbed.world import plan as plan_lang

PROMPTS = ["a red circle", "three stars", "a circle left of a square"]


@pytest.fixture
def adapter():
    torch.manual_seed(0)
    vq = VQVAE(VQConfig(resolution=16, channels=(8, 16), codebook_size=16, code_dim=4))
    gpt = TokenGPT(ARConfig(dim=32, layers=2, heads=2, mlp_ratio=2, codebook_size=16, grid=4))
    with torch.no_grad():  # sharper than the 0.02 init, so that top-k and CFG change the distribution
        gpt.head.weight.normal_(0, 0.5)
    return ShapesARAdapter(gpt.eval(), vq)


@pytest.mark.parametrize("s", [
    ARSampling(guidance_scale=3.0, temperature=0.7, top_k=5, plan=True),
    ARSampling(guidance_scale=1.0, temperature=1.3, top_k=None, plan=False),
])
def test_ratio_is_one_right_after_sampling(adapter, s):
    policy = make_policy(adapter)
    assert isinstance(policy, AutoregressivePolicy)
    traj = policy.sample(PROMPTS, [1, 2, 3], s)
    n = plan_lang.PLAN_LENGTH + 16
    assert traj.states.shape == (3, n) and traj.log_probs.shape == (3, n) and traj.images.shape == (3, 3, 16, 16)
    lp = policy.log_prob(traj, list(range(n)))  # one teacher-forced forward
    assert lp.log_prob.shape == (3, n) and lp.log_prob.requires_grad
    assert (lp.log_prob.detach() - traj.log_probs).abs().max() < 1e-4
    assert torch.isfinite(lp.log_prob).all() and (traj.log_probs <= 0).all()
    one = policy.log_prob(traj, 30)
    assert one.log_prob.shape == (3,) and torch.allclose(one.log_prob.detach(), traj.log_probs[:, 30], atol=1e-4)
    # every image token is a free draw: some log-probs are below 0 (the plan's '@' and PADs are forced: 0)
    assert (traj.log_probs[:, plan_lang.PLAN_LENGTH:] < 0).any()
    for plan in adapter.plans(traj.states):
        if s.plan:
            assert plan_lang.parse_plan(plan)  # the grammar mask: every sampled plan parses
        else:
            assert plan == ""


def test_kv_cache_and_full_forward_agree(adapter):
    torch.manual_seed(1)
    ids = torch.randint(0, adapter.model.embed.num_embeddings, (2, 20))
    full = adapter.predict(ids)[0]  # [2, 20, V]
    for cache in (None, adapter.new_cache()):  # concatenated (k, v) tuples, and the preallocated buffers
        logits, cache = adapter.predict(ids[:, :8], 0, cache)
        steps = [logits]
        for j in range(8, 20):
            logits, cache = adapter.predict(ids[:, j : j + 1], j, cache)
            steps.append(logits)
        assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    assert cache[0].length == 20 and cache[0].k.shape[2] == adapter.config.context
    with pytest.raises(ValueError, match="the cache holds 20 positions, the input starts at 19"):
        adapter.predict(ids[:, :1], 19, cache)  # a step written twice would corrupt the cache
    # the sampler on the cache draws the same tokens as recomputing the whole prefix at every token
    policy = make_policy(adapter)
    s = ARSampling(guidance_scale=2.0, top_k=8)
    assert torch.equal(policy.sample(PROMPTS, [4, 5, 6], s).states, policy.sample_recompute(PROMPTS, [4, 5, 6], s))


def test_step_function_by_hand():
    cond, uncond = torch.tensor([[2.0, 0.0, 1.0, -1.0]]), torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    allowed = torch.tensor([[True, True, True, False]])
    s = ARSampling(guidance_scale=2.0, temperature=0.5, top_k=2)
    # guided: u + 2 (c - u) = [3, 0, 1, -2]; / 0.5 = [6, 0, 2, -4]; masked -> [6, 0, 2, -inf]; top-2 -> [6, -, 2, -]
    lp = token_log_probs(cond, uncond, allowed, s)
    z = math.log(math.exp(6) + math.exp(2))
    assert torch.allclose(lp[0, [0, 2]], torch.tensor([6 - z, 2 - z])) and lp[0, 1] == lp[0, 3] == float("-inf")
    # a recomputation keeps the drawn token in the support even if it fell out of the top-k
    kept = token_log_probs(cond, uncond, allowed, s, taken=torch.tensor([1]))
    assert torch.isfinite(kept[0, 1])
    # inverse CDF: probabilities [0.5, 0, 0.5]: u < 0.5 -> 0, u >= 0.5 -> 2, never the 0-probability token
    logp = torch.log(torch.tensor([[0.5, 0.0, 0.5]] * 3))
    assert inverse_cdf(logp, torch.tensor([0.1, 0.5, 0.99], dtype=torch.float64)).tolist() == [0, 2, 2]


def test_sampling_is_seeded_and_independent_of_the_batch(adapter):
    policy = make_policy(adapter)
    s = ARSampling(guidance_scale=2.0)
    a = policy.sample(PROMPTS, [1, 2, 3], s)
    assert torch.equal(a.states, policy.sample(PROMPTS, [1, 2, 3], s).states)
    assert torch.equal(policy.sample(PROMPTS[1:2], [2], s).states[0], a.states[1])
    assert not torch.equal(policy.sample(PROMPTS, [1, 2, 4], s).states[2], a.states[2])
    greedy = policy.sample(PROMPTS, [1, 2, 3], ARSampling(kind="greedy"))
    assert (greedy.log_probs == 0).all() and not policy.stochastic_mask(ARSampling(kind="greedy")).any()


def test_grpo_loss_and_kl_on_token_steps(adapter):
    """The unchanged grpo algorithm on token steps: on-policy ratio 1, KL 0 at the reference, > 0 after a change."""
    from visalign.algorithms import load_algorithm

    policy = make_policy(adapter)
    s = ARSampling(guidance_scale=2.0, top_k=6)
    traj = policy.sample(PROMPTS * 2, list(range(6)), s)
    algo = load_algorithm("grpo", {"kl_beta": 0.1, "clip_range": 0.2})
    adv = algo.advantages(torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0, 0.5]), traj.prompts, 2)
    steps = algo.train_steps(traj, torch.Generator().manual_seed(0))
    assert len(steps) == traj.states.shape[1]
    base = _detached(policy.log_prob(traj, steps))  # the reference: the weights before any update
    loss, m = algo.step_loss(policy, traj, adv, steps, lambda t, k: base)
    assert m["ratio_dev"] < 1e-4 and abs(m["kl"]) < 1e-6  # on-policy: ratio 1, KL 0
    loss.backward()
    grad = adapter.model.head.weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        adapter.model.head.bias.add_(torch.randn_like(adapter.model.head.bias))
    _, moved = algo.step_loss(policy, traj, adv, steps, lambda t, k: base)
    assert moved["kl"] > 1e-3 and moved["ratio_dev"] > 1e-3


def _detached(lp):
    lp.log_prob, lp.dist = lp.log_prob.detach(), lp.dist.detach()
    return lp


def test_step_kl_is_the_categorical_kl(adapter):
    from visalign.types import StepLogProb

    policy = make_policy(adapter)
    p = torch.log(torch.tensor([[[0.5, 0.5, 0.0]]]))
    q = torch.log(torch.tensor([[[0.25, 0.25, 0.5]]]))
    kl = policy.step_kl(StepLogProb(p[..., 0], dist=p), StepLogProb(q[..., 0], dist=q))
    assert torch.allclose(kl, torch.tensor([math.log(2)]))  # 0.5 log 2 + 0.5 log 2


def test_plan_language():
    text = "red circle @ left ; blue square @ top-right"
    ids = plan_lang.encode_plan(text)
    assert len(ids) == plan_lang.PLAN_LENGTH and plan_lang.decode_plan(ids) == text
    assert plan_lang.parse_plan(text) == [("red", "circle", "left"), ("blue", "square", "top-right")]
    prefix = torch.tensor([ids])
    for j in range(plan_lang.PLAN_LENGTH):  # the grammar mask accepts the plan's own tokens, and only one word
        a = plan_lang.allowed_next(prefix[:, :j])
        assert a[0, ids[j]]
    assert plan_lang.allowed_next(prefix[:, :2])[0].sum() == 1  # '@' is forced
    assert plan_lang.cell_of(1.0, 1.0, 32) == "top-left" and plan_lang.cell_of(16, 31, 32) == "bottom"


def test_bad_input_is_one_line_errors(adapter):
    from visalign.testbed.world.grammar import PromptError

    policy = make_policy(adapter)
    for bad, match in [("red circle left", "is not 'COLOR SHAPE @ CELL'"), ("pink circle @ left", "unknown colour"),
                       (" ; ".join(["red circle @ left"] * 5), "at most 4 objects")]:
        with pytest.raises(plan_lang.PlanError, match=match) as e:
            plan_lang.parse_plan(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        ARSampling(top_k=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ARSampling(temperature=0.0)
    with pytest.raises(PromptError, match="reads at most 8"):
        policy.sample(["a red circle and a blue square and a green star"], [0])
    with pytest.raises(ValueError, match="exceeds the model's context of"):
        adapter.predict(torch.zeros(1, adapter.config.context + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="no sampling steps"):
        policy.eval_sampling(steps=10)


def test_vq_round_trip_shapes_and_save_load(tmp_path):
    torch.manual_seed(0)
    vq = VQVAE(VQConfig(resolution=16, channels=(8, 16), codebook_size=16, code_dim=4)).train()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    recon, commit, ids = vq(x)
    assert recon.shape == x.shape and ids.shape == (4, 16) and commit.item() >= 0
    assert vq.ema_count.sum() > 0  # the EMA codebook step ran (training mode)
    vq.eval()
    ids = vq.encode(x)
    assert vq.decode(ids).shape == (4, 3, 16, 16) and vq.decode(ids).abs().max() <= 1
    vq.save_pretrained(tmp_path, dtype=torch.float16)
    loaded = VQVAE.from_pretrained(tmp_path)
    assert torch.equal(loaded.encode(x), VQVAE.from_pretrained(tmp_path).encode(x))
    assert torch.allclose(loaded.codebook, vq.codebook, atol=1e-2)


def test_online_dpo_on_sequence_log_probs_by_hand():
    """unit: sequence (AR-DPO): one DPO instance per pair on the summed log-ratios of the trained steps."""
    from visalign.algorithms import load_algorithm
    from visalign.types import Trajectory

    class Table:
        def __init__(self, table):
            self.table = table

        def log_prob(self, traj, steps):
            from visalign.types import StepLogProb

            return StepLogProb(self.table[:, steps])

    traj = Trajectory(prompts=["a circle"] * 2, seeds=[0, 1], states=torch.zeros(2, 2, dtype=torch.long),
                      log_probs=torch.zeros(2, 2), sigmas=torch.linspace(1, 0, 3),
                      stochastic=torch.ones(2, dtype=torch.bool), images=torch.zeros(2, 3, 4, 4),
                      extras={"group_size": 2})
    lp = torch.tensor([[0.2, 0.1], [0.0, -0.1]], requires_grad=True)  # sample 0 is the chosen one
    algo = load_algorithm("online_dpo", {"beta": 2.0, "unit": "sequence"})
    loss, m = algo.step_loss(Table(lp), traj, torch.tensor([1.0, 0.0]), [0, 1], None)
    # sequence log-ratios 0.3 and -0.1 -> margin 0.4 -> -log sigmoid(2 x 0.4)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.8)), rel=1e-6) and m["dpo_accuracy"] == 1.0
    per_step = load_algorithm("online_dpo", {"beta": 2.0})  # two instances: margins 0.2 and 0.2
    assert per_step.step_loss(Table(lp), traj, torch.tensor([1.0, 0.0]), [0, 1], None)[0].item() == pytest.approx(
        math.log1p(math.exp(-0.4)), rel=1e-6)

    # RWR on exact log-probs (weighted maximum likelihood): per-token NLL [-0.15, 0.05] weighted [1.6, 0.4]
    rwr = load_algorithm("rwr")
    rwr.likelihood = True  # what check() decides for a policy without a denoising network
    w = torch.tensor([1.6, 0.4])
    loss, m = rwr.step_loss(Table(lp), traj, w, [0, 1], None)
    assert loss.item() == pytest.approx((1.6 * -0.15 + 0.4 * 0.05) / 2, rel=1e-6)
    assert m["rwr_err"] == pytest.approx(-0.05, rel=1e-6)
    loss.backward()
    assert (lp.grad[0] < 0).all() and lp.grad[0, 0] == pytest.approx(-1.6 / 4)  # raise the heavier sample most
    # the diagnostic's part: weights minus the reward-free 1
    assert rwr.signal_loss(Table(lp), traj, w, [0, 1]).item() == pytest.approx((0.6 * -0.15 - 0.6 * 0.05) / 2, rel=1e-6)


def test_denoising_only_algorithms_refuse_the_token_policy_in_one_line(adapter):
    from visalign.algorithms import CapabilityError, load_algorithm

    policy = make_policy(adapter)
    for name in ("nft", "diffusion_dpo", "refl", "draft", "alignprop"):
        with pytest.raises(CapabilityError, match=f"{name} needs policy.* AutoregressivePolicy") as e:
            load_algorithm(name).check(policy, None, ARSampling())
        assert "\n" not in str(e.value)
    for name in ("grpo", "ddpo", "dpok", "online_dpo", "rwr"):
        load_algorithm(name).check(policy, None, ARSampling())
    with pytest.raises(CapabilityError, match="deterministic"):
        load_algorithm("grpo").check(policy, None, ARSampling(kind="greedy"))


def test_a_given_plan_is_drawn_and_scored_as_forced(adapter):
    policy = make_policy(adapter)
    text = "red circle @ left ; blue square @ right"
    s = ARSampling(guidance_scale=2.0, plan=text)
    traj = policy.sample(PROMPTS[:2], [1, 2], s)
    assert adapter.plans(traj.states) == [text, text]
    assert (traj.log_probs[:, : plan_lang.PLAN_LENGTH] == 0).all()  # forced words carry no log-prob
    lp = policy.log_prob(traj, list(range(traj.states.shape[1]))).log_prob.detach()
    assert (lp - traj.log_probs).abs().max() < 1e-4
    with pytest.raises(plan_lang.PlanError, match="unknown cell 'middle'"):  # the model's plan grammar reads it
        make_policy(adapter, ARSampling(plan="red circle @ middle"))


def test_text_task_token_model_has_no_plan_and_keeps_the_ratio_invariant(tmp_path):
    """The text task (world/text.py) on the same classes: a wide VQ grid (16 x 32 -> 4 x 8 tokens), letter tokens
    in the prompt, no plan slot; the ratio is 1 on-policy; a text prompt is parsed by the text grammar; a GPT
    and a tokenizer of different tasks or grids are refused in one line; save + load round-trips the width."""
    from visalign.testbed.world.grammar import PromptError

    torch.manual_seed(0)
    vq = VQVAE(VQConfig(resolution=16, width=32, task="text", channels=(8, 16), codebook_size=16, code_dim=4))
    gpt = TokenGPT(ARConfig(task="text", dim=32, layers=2, heads=2, mlp_ratio=2, codebook_size=16, grid=4, grid_w=8))
    with torch.no_grad():
        gpt.head.weight.normal_(0, 0.5)
    adapter = ShapesARAdapter(gpt.eval(), vq)
    assert (adapter.plan_length, adapter.n_plan, adapter.gen_length) == (0, 0, 32)
    prompts = ['a sign that says "CAT"', 'a sign that says "Q"']
    policy = make_policy(adapter)
    traj = policy.sample(prompts, [1, 2], ARSampling(guidance_scale=3.0, temperature=0.8))
    assert traj.states.shape == (2, 32) and traj.images.shape == (2, 3, 16, 32)
    assert (traj.states < 16).all() and (traj.log_probs < 0).all()  # every token is an image code, drawn freely
    lp = policy.log_prob(traj, list(range(32)))
    assert (lp.log_prob.detach() - traj.log_probs).abs().max() < 1e-4
    assert adapter.plans(traj.states) == ["", ""]
    assert torch.equal(adapter.encode_images(traj.images), vq.encode(traj.images))
    # different letters are different prompt tokens: the conditional logits differ
    ids = adapter.encode(['a sign that says "CAT"', 'a sign that says "CAB"'])
    assert ids.shape == (2, 8) and not torch.equal(ids[0], ids[1])
    assert adapter.parse_prompt(prompts[0]).text == "CAT"
    with pytest.raises(PromptError):
        adapter.parse_prompt("a red circle")
    with pytest.raises(ValueError, match="tokenizer was trained on shapes renders"):
        ShapesARAdapter(gpt, VQVAE(VQConfig(resolution=16, width=32, channels=(8, 16), codebook_size=16, code_dim=4)))
    with pytest.raises(ValueError, match="4x8 tokens .* gives 4x4"):
        ShapesARAdapter(gpt, VQVAE(VQConfig(resolution=16, task="text", channels=(8, 16), codebook_size=16, code_dim=4)))
    vq.save_pretrained(tmp_path / "vq")
    assert VQVAE.from_pretrained(tmp_path / "vq").config.grid == (4, 8)
