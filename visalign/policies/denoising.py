"""What the flow and diffusion policies share: a model adapter + a step function = a policy over denoising chains.

`sample()` and `log_prob()` call the same `_step()` (model forward + CFG + the family's step math), so a
log-prob recomputed right after sampling equals the rollout's (the PPO ratio is exactly 1 on-policy).
Noise is drawn per sample from its own seed, so a sample does not depend on what else is in the batch
(or on which process drew it).

With classifier-free guidance the unconditional branch carries no gradient, so while the weights are still
those of the rollout (the first optimizer step of a PPO update is on-policy) its output is the one the rollout
computed: sample() keeps it (traj.extras["uncond"]) with a stamp of the weights, and log_prob() reuses it
instead of running the network again when the stamp still matches (an UncondCache).

The adapter interface (flow and diffusion alike):
  encode(prompts) -> cond            cond[idx] slices it, type(cond).cat([...]) joins
  predict(x, t [B], cond) -> [B, ...] the network output (a velocity, or the diffusion prediction_type)
  decode(x) -> images [B, 3, H, W] in [-1, 1]
  encode_images(images [B, 3, H, W] in [-1, 1]) -> x [B, ...]   (offline data: a dataset's images as latents)
  latent_shape, default_steps, default_guidance, module (the trainable nn.Module)
A subclass gives the schedule of a sampling config, the step math, and the forward-process noising that
likelihood-free algorithms train on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from ..math.sde import StepOutput, flow_kl
from ..lora import adapters_enabled
from ..types import StepLogProb, Trajectory


def check_sampling(s, kinds: tuple[str, ...]) -> None:
    """What every sampling config must satisfy (one-line ValueErrors)."""
    if s.kind not in kinds:
        raise ValueError(f"unknown step kind '{s.kind}'; accepted: {', '.join(kinds)}")
    if s.steps < 1:
        raise ValueError(f"steps must be >= 1, got {s.steps}")
    if s.sde_window is not None:
        a, b = s.sde_window
        if not 0 <= a < b <= s.steps:
            raise ValueError(f"sde_window {s.sde_window} must satisfy 0 <= start < end <= steps ({s.steps})")


def per_sample_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """[B, *shape] standard normal noise, row b drawn from its own generator seeded with seeds[b]."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def draw_generators(seeds: list[int], draw: int) -> list[torch.Generator]:
    """One generator per sample, seeded with (sample seed, draw): forward-process draws of a sample do not
    depend on the batch or the process."""
    return [torch.Generator().manual_seed(int(np.random.default_rng([int(s), int(draw)]).integers(2**62)))
            for s in seeds]


def weights_stamp(module: torch.nn.Module) -> tuple:
    """What the module's output depends on besides its input: which module, each parameter's in-place version
    counter (bumped by every optimizer step, EMA swap and state-dict load), its LoRA layers' on/off state and
    train/eval mode. Equal stamps: the same function (barring writes through .data, which visalign never does)."""
    return id(module), tuple(p._version for p in module.parameters()), adapters_enabled(module), module.training


@dataclass
class UncondCache:
    """The unconditional network outputs a rollout computed, pred [B, T, ...] (step i of sample b), and the
    weights_stamp they were computed under."""

    pred: torch.Tensor
    stamp: tuple

    def select(self, idx: torch.Tensor) -> UncondCache:
        return UncondCache(self.pred[idx], self.stamp)


class DenoisingPolicy:
    Sampling = None  # the family's frozen sampling config class
    STOCHASTIC_KINDS: tuple[str, ...] = ()

    def __init__(self, adapter, sampling=None):
        self.adapter = adapter
        self.sampling = sampling if sampling is not None else self.Sampling()

    # ------------------------------------------------------------------------------ family specifics

    def schedule(self, s) -> dict:
        """{'sigmas': [T+1] noise level of every state, from ~1 to 0, ...anything _step_math needs}."""
        raise NotImplementedError

    def _step_math(self, x, i, pred, sched: dict, s, stochastic: bool, noise, prev_sample) -> StepOutput:
        raise NotImplementedError

    def model_time(self, sched: dict, i: int) -> torch.Tensor:
        """The network's time input at step i (a scalar tensor)."""
        raise NotImplementedError

    def noised_sample(self, traj: Trajectory, draw: int):
        """Forward-noise each final sample for a denoising loss -> x_t [B, ...], t [B] (the network's time
        input), target [B, ...] (what predict() should output there)."""
        raise NotImplementedError

    def _x0_math(self, x, i, pred, sched: dict) -> torch.Tensor:
        """The clean sample x0_hat [R, ...] that the network output `pred` at step i (per row) predicts."""
        raise NotImplementedError

    def _noise_to(self, x0, i: int, sched: dict, eps) -> torch.Tensor:
        """The state at step i's noise level made from the clean x0 and noise eps (the forward process)."""
        raise NotImplementedError

    def stochastic_mask(self, sampling=None) -> torch.Tensor:
        """[T] bool: which steps are drawn from the SDE (and carry a log-prob)."""
        s = sampling or self.sampling
        mask = torch.full((s.steps,), s.kind in self.STOCHASTIC_KINDS)
        if s.sde_window is not None:
            mask[:] = False
            mask[s.sde_window[0] : s.sde_window[1]] = s.kind in self.STOCHASTIC_KINDS
        return mask

    # -------------------------------------------------------------------------------------- shared

    def eval_sampling(self, steps: int | None = None, guidance: float | None = None):
        """The deterministic sampler evaluation uses, with the model's own defaults."""
        # `is None`, not `or`: steps=0 is refused by the Sampling, not silently the default
        return self.Sampling(steps=self.adapter.default_steps if steps is None else steps, kind="ode",
                             guidance_scale=self.adapter.default_guidance if guidance is None else guidance)

    def guided(self, x, t, cond, uncond, guidance_scale: float, p_u=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (p = p_u + w (p_c - p_u) in fp32, p_u). x [B, ...]; t [B]. The unconditional branch never
        carries gradients (Flow-GRPO detaches it); without gradients at all (sampling) both branches run as
        one batch of 2B, which is faster than two calls of B. A given p_u [B, ...] is used as it is."""
        if guidance_scale == 1.0 or uncond is None:
            return self.adapter.predict(x, t, cond).float(), None
        if p_u is not None:
            p_c = self.adapter.predict(x, t, cond).float()
        elif not torch.is_grad_enabled():
            both = self.adapter.predict(torch.cat([x, x]), torch.cat([t, t]), type(cond).cat([cond, uncond])).float()
            p_c, p_u = both.chunk(2)
        else:
            p_c = self.adapter.predict(x, t, cond).float()
            with torch.no_grad():
                p_u = self.adapter.predict(x, t, uncond).float()
        return p_u + guidance_scale * (p_c - p_u), p_u

    def _step(self, x, i, sched, cond, uncond, s, stochastic: bool, noise=None, prev_sample=None,
              p_u=None) -> tuple[StepOutput, torch.Tensor | None]:
        """The one step function: forward + CFG + the step math -> (the step, the unconditional output). x [R,
        ...]; i [R] long, the step index of each row (rows may sit at different steps: log_prob scores several
        steps of a chain in one forward); p_u [R, ...]: the unconditional output, if already known."""
        pred, p_u = self.guided(x, self.model_time(sched, i).to(x.device), cond, uncond, s.guidance_scale, p_u)
        return self._step_math(x, i, pred, sched, s, stochastic, noise, prev_sample), p_u

    def conditions(self, prompts: list[str], guidance_scale: float):
        cond = self.adapter.encode(prompts)
        if guidance_scale == 1.0:
            return cond, None
        with torch.no_grad():
            return cond, self.adapter.encode([""] * len(prompts))

    @torch.no_grad()
    def sample(self, prompts: list[str], seeds: list[int], sampling=None, init_seeds: list[int] | None = None,
               latents: torch.Tensor | None = None) -> Trajectory:
        """Sample chains. Sample b's noise comes from seeds[b]; with `init_seeds`, its starting noise comes
        from init_seeds[b] instead (a group can share its start and differ only in the SDE noise); with
        `latents` [B, ...], those are the start (to match another sampler given the same latents)."""
        s = sampling or self.sampling
        sched = self.schedule(s)
        mask = self.stochastic_mask(s)
        noise = per_sample_noise(seeds, (s.steps + 1, *self.adapter.latent_shape))  # [B, T+1, C, H, W]
        if init_seeds is not None:
            noise[:, 0] = per_sample_noise(init_seeds, tuple(self.adapter.latent_shape))
        if latents is not None:
            noise[:, 0] = latents.float().cpu()
        # drawn on the CPU (the same numbers on any device), then moved to where the network is
        noise = noise.to(next(self.adapter.module.parameters()).device)
        cond, uncond = self.conditions(prompts, s.guidance_scale)
        x = noise[:, 0]
        states, log_probs, uncond_preds = [x], [], []
        for i in range(s.steps):
            step = torch.full((len(prompts),), i, dtype=torch.long)
            out, p_u = self._step(x, step, sched, cond, uncond, s, bool(mask[i]), noise=noise[:, i + 1])
            x = out.prev_sample
            states.append(x)
            log_probs.append(out.log_prob)
            uncond_preds.append(p_u)
        extras = {"sampling": s}
        if uncond is not None:
            extras["uncond"] = UncondCache(torch.stack(uncond_preds, 1), weights_stamp(self.adapter.module))  # [B, T, ...]
        return Trajectory(
            prompts=list(prompts), seeds=list(seeds), states=torch.stack(states, 1), log_probs=torch.stack(log_probs, 1),
            sigmas=sched["sigmas"], stochastic=mask, images=self.adapter.decode(x), extras=extras,
        )

    def log_prob(self, traj: Trajectory, steps: int | list[int], sampling=None) -> StepLogProb:
        """Recompute the steps `steps` of traj under the current parameters (gradients flow), all in one
        forward of B x K rows. An int step gives log_prob [B], mean [B, ...]; a list of K steps gives
        log_prob [B, K], mean [B, K, ...], std [B, K, 1, ...]. The steps must all be stochastic or all not."""
        s = sampling or traj.extras.get("sampling", self.sampling)
        ks = [steps] if isinstance(steps, int) else [int(k) for k in steps]
        flags = {bool(traj.stochastic[k]) for k in ks}
        if len(flags) != 1:
            raise ValueError(f"steps {ks} mix stochastic and deterministic steps; score them apart")
        b, k = len(traj), len(ks)
        idx = torch.tensor(ks)
        rows = torch.arange(b).repeat_interleave(k)  # [B*K] the sample of each row (row = b * K + j)
        cond, uncond = self.conditions(traj.prompts, s.guidance_scale)
        cond, uncond = cond[rows], (uncond[rows] if uncond is not None else None)
        cache = traj.extras.get("uncond")
        p_u = None  # the rollout's unconditional outputs, while they are still this network's
        if cache is not None and s == traj.extras.get("sampling") and cache.stamp == weights_stamp(self.adapter.module):
            p_u = cache.pred[:, idx].flatten(0, 1).to(traj.states.device)  # [B*K, ...]
        out, _ = self._step(traj.states[:, idx].flatten(0, 1), idx.repeat(b), self.schedule(s), cond, uncond, s,
                            flags.pop(), prev_sample=traj.states[:, idx + 1].flatten(0, 1), p_u=p_u)
        if isinstance(steps, int):
            return StepLogProb(out.log_prob, out.mean, out.std)
        return StepLogProb(out.log_prob.view(b, k), out.mean.view(b, k, *out.mean.shape[1:]),
                           out.std.view(b, k, *out.std.shape[1:]))

    def step_kl(self, lp: StepLogProb, ref: StepLogProb) -> torch.Tensor:
        """KL between the policy's and the reference's step Gaussians, in mean space
        (docs/architecture.md#flow-sde), mean over the steps -> [B]."""
        return flow_kl(lp.mean, ref.mean, lp.std)

    # ------------------------------------------------------------------ reward gradients and offline data

    def denoise(self, traj: Trajectory, start: int, sampling=None, grad_checkpoint: bool = True) -> torch.Tensor:
        """Re-run steps start..T-1 of traj from its state at `start` under the current parameters, with
        gradients, and return the final latent [B, ...]: what DRaFT-K (Clark et al., 2023, arXiv 2309.17400)
        and AlignProp (Prabhudesai et al., 2023, arXiv 2310.03739) backpropagate a reward through. A
        stochastic step reuses the noise sample() drew (regenerated from the seeds), so at unchanged weights
        this reproduces traj's final state. With grad_checkpoint each step's activations are recomputed in
        the backward pass: memory holds one step, not T - start."""
        s = sampling or traj.extras.get("sampling", self.sampling)
        if not 0 <= start < s.steps:
            raise ValueError(f"start step {start} is outside the chain's {s.steps} steps")
        sched, b = self.schedule(s), len(traj)
        x = traj.states[:, start]  # [B, C, H, W], no gradient: the chain up to `start` is a constant
        noise = per_sample_noise(traj.seeds, (s.steps + 1, *x.shape[1:])).to(x.device)  # [B, T+1, C, H, W]
        cond, uncond = self.conditions(traj.prompts, s.guidance_scale)
        for i in range(start, s.steps):
            step = torch.full((b,), i, dtype=torch.long)

            def one(x_, i=i, step=step):
                return self._step(x_, step, sched, cond, uncond, s, bool(traj.stochastic[i]),
                                  noise=noise[:, i + 1])[0].prev_sample

            x = checkpoint(one, x, use_reentrant=False) if grad_checkpoint and torch.is_grad_enabled() else one(x)
        return x

    def predict_x0(self, traj: Trajectory, step: int, sampling=None, x: torch.Tensor | None = None) -> torch.Tensor:
        """x0_hat [B, ...] from the state at `step` (or from `x` given at that step's noise level) in one
        guided network forward with gradients: ReFL's shortcut to a clean image (Xu et al., 2023, arXiv
        2304.05977) and DRaFT-LV's last step."""
        s = sampling or traj.extras.get("sampling", self.sampling)
        sched = self.schedule(s)
        x = traj.states[:, step] if x is None else x
        i = torch.full((len(traj),), step, dtype=torch.long)
        cond, uncond = self.conditions(traj.prompts, s.guidance_scale)
        pred, _ = self.guided(x, self.model_time(sched, i).to(x.device), cond, uncond, s.guidance_scale)
        return self._x0_math(x.float(), i, pred, sched)

    def renoise(self, traj: Trajectory, step: int, draw: int, sampling=None) -> torch.Tensor:
        """traj's final states noised afresh to step `step`'s noise level (noise from each sample's seed and
        `draw`) -> [B, ...]. DRaFT-LV denoises several of these to cut the variance of the reward gradient."""
        s = sampling or traj.extras.get("sampling", self.sampling)
        x0 = traj.states[:, -1]
        eps = torch.stack([torch.randn(tuple(x0.shape[1:]), generator=g) for g in draw_generators(traj.seeds, draw)])
        return self._noise_to(x0, step, self.schedule(s), eps.to(x0))

    def from_images(self, images: torch.Tensor, prompts: list[str], seeds: list[int]) -> Trajectory:
        """A one-state trajectory holding given clean images (an offline dataset's) as final states, for the
        losses that only noise final samples (Diffusion-DPO, RWR). images [B, 3, H, W] in [-1, 1]."""
        x0 = self.adapter.encode_images(images).float()  # [B, C, h, w]
        return Trajectory(prompts=list(prompts), seeds=list(seeds), states=x0[:, None],
                          log_probs=torch.zeros(len(prompts), 0), sigmas=torch.zeros(1),
                          stochastic=torch.zeros(0, dtype=torch.bool), images=images, extras={"sampling": self.sampling})

    def predict(self, x: torch.Tensor, t: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The conditional network output (no guidance), fp32: what likelihood-free algorithms train."""
        return self.adapter.predict(x, t, self.adapter.encode(prompts)).float()

    def predict_guided(self, x: torch.Tensor, t: torch.Tensor, prompts: list[str], guidance_scale: float) -> torch.Tensor:
        """The guided output p_u + w (p_c - p_u), fp32, gradients through the conditional branch only: the
        velocity a CFG sampler follows, for a likelihood-free loss that trains the sampler as it is evaluated."""
        cond, uncond = self.conditions(prompts, guidance_scale)
        return self.guided(x, t, cond, uncond, guidance_scale)[0]
