"""AutoregressivePolicy: a token model adapter (models/ar.py) + the token step math
(docs/architecture.md#token-steps) = a policy over token sequences, trained by the same trainer and algorithms as
the denoising families.

A trajectory's step i is generated token i (the plan's words, then the image tokens): states [B, N] holds the
output ids, log_probs [B, N] the log-prob of each under the distribution it was drawn from. That distribution
is `token_log_probs`, the ONE step function that sample() and log_prob() share:

    logits_cfg = uncond + w (cond - uncond)                   classifier-free guidance (w = guidance_scale)
    log p      = log_softmax(mask(logits_cfg / temperature))  mask: the grammar of the position, then top-k

so a log-prob recomputed right after sampling equals the rollout's (the PPO ratio is 1 on-policy; tested).
sample() runs the network one token at a time on a KV cache; log_prob() scores a whole sequence with one
teacher-forced forward. A token forced by the grammar (the plan's '@', the PADs after its END) has log-prob 0
and no gradient. Sample b's token draws come from its own seed, so it does not depend on the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..types import StepLogProb, Trajectory

AR_KINDS = ("sample", "greedy")


@dataclass(frozen=True)
class ARSampling:
    guidance_scale: float = 3.0  # 1 = no classifier-free guidance
    temperature: float = 1.0
    top_k: int | None = None  # keep the k most likely tokens (None: all)
    plan: bool | str = True  # write a plan first; False: the empty plan; a plan text: draw that layout (forced)
    kind: str = "sample"  # sample | greedy (argmax of the same distribution; no log-probs)

    def __post_init__(self):
        if self.kind not in AR_KINDS:
            raise ValueError(f"unknown step kind '{self.kind}'; accepted: {', '.join(AR_KINDS)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}; use kind greedy for argmax decoding")
        if not isinstance(self.plan, (bool, str)):  # a plan text is checked by the model's plan grammar (policy)
            raise ValueError(f"plan must be true, false or a plan text, got {self.plan!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k must be >= 1 (or null for no top-k), got {self.top_k}")


def token_log_probs(cond: torch.Tensor, uncond: torch.Tensor | None, allowed: torch.Tensor, s: ARSampling,
                    taken: torch.Tensor | None = None) -> torch.Tensor:
    """The step function (docs/architecture.md#token-steps). cond, uncond [..., V] logits; allowed [..., V] bool
    (the grammar); taken [...] the token a rollout drew, kept in the top-k set when recomputing (a near-tie that float
    rounding reorders must not turn the drawn token's log-prob into -inf) -> log p [..., V] in fp32."""
    logits = cond.float() if uncond is None else uncond.float() + s.guidance_scale * (cond.float() - uncond.float())
    logits = (logits / s.temperature).masked_fill(~allowed, float("-inf"))
    if s.top_k is not None and s.top_k < logits.shape[-1]:
        kth = logits.topk(s.top_k, dim=-1).values[..., -1:]  # [..., 1]
        keep = logits >= kth
        if taken is not None:
            keep = keep.scatter(-1, taken.unsqueeze(-1), True)
        logits = logits.masked_fill(~keep, float("-inf"))
    return torch.log_softmax(logits, -1)


class AutoregressivePolicy:
    """The token adapter interface (the bundled one: visalign/testbed/models/ar.py): encode(prompts) -> ids,
    predict(ids, start, cache) -> (logits, cache), new_cache(), decode(tokens) -> images, config (codebook_size and
    the sampling defaults), gen_length, prompt_length, offset, and a plan slot of plan_length tokens (0: none) over
    the first n_plan output ids whose grammar is `plan_grammar`: parse_plan(text) (raises on a bad plan),
    encode_plan(text) -> ids, allowed_next(prefix [R, j], enabled) -> [R, n_plan] bool."""

    Sampling = ARSampling
    STOCHASTIC_KINDS = ("sample",)

    def __init__(self, adapter, sampling=None):
        self.adapter = adapter
        self.sampling = self.check(sampling) if sampling is not None else self.eval_sampling()

    def check(self, s: ARSampling) -> ARSampling:
        """A sampling whose plan text the model's plan grammar reads (its one-line error otherwise)."""
        grammar = getattr(self.adapter, "plan_grammar", None)
        if isinstance(s.plan, str) and grammar is not None:
            grammar.parse_plan(s.plan)
        return s

    def eval_sampling(self, steps: int | None = None, guidance: float | None = None) -> ARSampling:
        """The model's own sampling defaults (AR evaluation samples: argmax decoding repeats itself)."""
        if steps is not None:
            raise ValueError(f"an autoregressive model has no sampling steps (got steps={steps}); it writes "
                             f"{self.adapter.gen_length} tokens")
        c = self.adapter.config
        return self.check(ARSampling(guidance_scale=c.guidance_scale if guidance is None else guidance,
                                     temperature=c.temperature, top_k=c.top_k, plan=c.plan))

    def stochastic_mask(self, sampling=None) -> torch.Tensor:
        s = sampling or self.sampling
        return torch.full((self.adapter.gen_length,), s.kind in self.STOCHASTIC_KINDS)

    # ------------------------------------------------------------------------------------------ masks

    def allowed(self, tokens: torch.Tensor, j: int, s: ARSampling) -> torch.Tensor:
        """tokens [R, >= j] output ids drawn so far -> [R, V] bool: what position j may hold. Plan positions
        take the plan grammar's words (or only the given plan's), image positions the image codes."""
        a = self.adapter
        out = torch.zeros(tokens.shape[0], a.n_plan + a.config.codebook_size, dtype=torch.bool)
        if j < a.plan_length and isinstance(s.plan, str):  # a given plan: its word is the only choice
            out[:, a.plan_grammar.encode_plan(s.plan)[j]] = True
        elif j < a.plan_length:
            out[:, : a.n_plan] = a.plan_grammar.allowed_next(tokens[:, :j].cpu(), enabled=s.plan)
        else:
            out[:, a.n_plan :] = True
        return out.to(tokens.device)

    def conditions(self, prompts: list[str], s: ARSampling) -> tuple[torch.Tensor, bool]:
        """-> prompt ids [R, L] (the B prompts, then B empty prompts when guided), and whether guided."""
        guided = s.guidance_scale != 1.0
        return self.adapter.encode(list(prompts) + ([""] * len(prompts) if guided else [])), guided

    # ------------------------------------------------------------------------------------------ sample

    @torch.no_grad()
    def sample(self, prompts: list[str], seeds: list[int], sampling=None, init_seeds=None, latents=None) -> Trajectory:
        """Draw gen_length tokens per prompt, one forward of one token per step on the KV cache."""
        if init_seeds is not None or latents is not None:
            raise ValueError("a token policy has no initial noise: shared_initial_noise and latents do not apply")
        s, a = self.check(sampling or self.sampling), self.adapter
        b, n = len(prompts), a.gen_length
        ids, guided = self.conditions(prompts, s)  # [R, L]
        # one uniform per (sample, token) from the sample's own seed: the draws do not depend on the batch
        u = torch.stack([torch.rand(n, generator=torch.Generator().manual_seed(int(x)), dtype=torch.float64)
                         for x in seeds])  # [B, N]
        logits, cache = a.predict(ids, 0, a.new_cache())  # prefill the prompt into a preallocated cache
        last = logits[:, -1]  # [R, V]
        tokens = torch.zeros(b, n, dtype=torch.long, device=ids.device)
        log_probs = torch.zeros(b, n, device=ids.device)
        for j in range(n):
            logp = token_log_probs(last[:b], last[b:] if guided else None, self.allowed(tokens, j, s), s)  # [B, V]
            tok = logp.argmax(-1) if s.kind == "greedy" else inverse_cdf(logp, u[:, j].to(logp.device))  # [B]
            tokens[:, j] = tok
            log_probs[:, j] = logp.gather(1, tok[:, None])[:, 0] if s.kind != "greedy" else 0.0
            if j + 1 < n:
                nxt = (tok + a.offset)[:, None]  # [B, 1] input ids
                logits, cache = a.predict(torch.cat([nxt, nxt]) if guided else nxt, a.prompt_length + j, cache)
                last = logits[:, -1]
        steps = torch.linspace(1.0, 0.0, n + 1)  # the share of the sequence still to write, the analogue of sigma
        return Trajectory(prompts=list(prompts), seeds=list(seeds), states=tokens, log_probs=log_probs, sigmas=steps,
                          stochastic=self.stochastic_mask(s), images=a.decode(tokens), extras={"sampling": s})

    @torch.no_grad()
    def sample_recompute(self, prompts: list[str], seeds: list[int], sampling=None) -> torch.Tensor:
        """The same draws as sample() without the KV cache: the whole prefix through the network at every
        token (what a cache saves; benchmarks/ar_kv_cache.py) -> tokens [B, N]."""
        s, a = sampling or self.sampling, self.adapter
        b, n = len(prompts), a.gen_length
        ids, guided = self.conditions(prompts, s)
        u = torch.stack([torch.rand(n, generator=torch.Generator().manual_seed(int(x)), dtype=torch.float64)
                         for x in seeds])
        tokens = torch.zeros(b, n, dtype=torch.long, device=ids.device)
        for j in range(n):
            gen = (tokens[:, :j] + a.offset)
            seq = torch.cat([ids, torch.cat([gen, gen]) if guided else gen], 1)  # [R, L + j]
            last = a.predict(seq)[0][:, -1]
            logp = token_log_probs(last[:b], last[b:] if guided else None, self.allowed(tokens, j, s), s)
            tokens[:, j] = logp.argmax(-1) if s.kind == "greedy" else inverse_cdf(logp, u[:, j].to(logp.device))
        return tokens

    # ----------------------------------------------------------------------------------------- scoring

    def sequence_log_probs(self, prompts: list[str], tokens: torch.Tensor, s: ARSampling) -> torch.Tensor:
        """All N positions of tokens [B, N] in one teacher-forced forward -> log p [B, N, V] under the
        current parameters (gradients flow through the conditional branch; the unconditional one is
        detached, as Flow-GRPO does for CFG)."""
        a = self.adapter
        b, n = tokens.shape
        ids, guided = self.conditions(prompts, s)  # [R, L]
        seq = tokens[:, :-1] + a.offset  # [B, N-1]: token j is predicted at position L-1+j
        cond = a.predict(torch.cat([ids[:b], seq], 1))[0][:, a.prompt_length - 1 :]  # [B, N, V]
        uncond = None
        if guided:
            with torch.no_grad():
                uncond = a.predict(torch.cat([ids[b:], seq], 1))[0][:, a.prompt_length - 1 :]
        allowed = torch.stack([self.allowed(tokens, j, s) for j in range(n)], 1)  # [B, N, V]
        return token_log_probs(cond, uncond, allowed, s, taken=tokens)

    def log_prob(self, traj: Trajectory, steps: int | list[int], sampling=None) -> StepLogProb:
        """Recompute the tokens `steps` of traj: log_prob [B] for an int, [B, K] for a list of K, from one
        forward over the whole sequence. `dist` holds the full log-distribution at those steps (for the KL)."""
        s = sampling or traj.extras.get("sampling", self.sampling)
        logp = self.sequence_log_probs(traj.prompts, traj.states, s)  # [B, N, V]
        ks = [steps] if isinstance(steps, int) else [int(k) for k in steps]
        idx = torch.tensor(ks, device=logp.device)
        dist = logp[:, idx]  # [B, K, V]
        lp = dist.gather(2, traj.states[:, idx].unsqueeze(-1))[..., 0]  # [B, K]
        if isinstance(steps, int):
            return StepLogProb(lp[:, 0], dist=dist[:, 0])
        return StepLogProb(lp, dist=dist)

    def step_kl(self, lp: StepLogProb, ref: StepLogProb) -> torch.Tensor:
        """Exact KL(policy || reference) of each step's token distribution, mean over steps -> [B]."""
        support = lp.dist > float("-inf")  # tokens outside the policy's support add nothing
        logp = lp.dist.masked_fill(~support, 0.0)  # (masked, not where(): no NaN gradients from -inf)
        logq = ref.dist.masked_fill(~support, 0.0).clamp_min(-30.0)  # a reference -inf inside it is capped
        terms = logp.exp() * (logp - logq) * support  # [B, (K,) V]
        return terms.sum(-1).reshape(terms.shape[0], -1).mean(1)


def inverse_cdf(logp: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Draw from log p [B, V] with uniforms u [B] in [0, 1): the first token whose cumulative probability
    exceeds u (float64, so the pick is the same on every device). A token of probability 0 is never drawn."""
    p = logp.double().exp()
    cdf = p.cumsum(-1)  # [B, V]
    tok = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0].clamp_max(p.shape[-1] - 1)
    return torch.where(p.gather(1, tok[:, None])[:, 0] > 0, tok, p.argmax(-1))

