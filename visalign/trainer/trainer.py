"""The one trainer: rollout -> reward -> advantages -> update, each stage timed; evaluation on the held-out
GenEval-S prompts, metrics, checkpoints and exact resume. Models, algorithms and rewards plug in through
their interfaces; nothing here knows which model or algorithm it runs, and only distributed.py knows ranks.

Reproducibility: every random choice of iteration i (prompts, per-sample noise seeds, trained steps)
comes from generators seeded with (seed, i), so a resumed run repeats an uninterrupted one exactly, and
minibatch k always holds the global samples j with j mod M == k, so N processes compute what one does.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .. import monitor
from .. import lora
from ..algorithms import load_algorithm
from ..config import EvalConfig, TrainConfig, TrainRecipe, build
from ..distributed import Distributed
from ..evaluate import diversity, evaluate_reward, reward_scores
from ..images import save_samples
from ..math.advantages import best_worst_rows
from ..math.schedules import lr_factor
from ..models.registry import PolicyGenerator, load_model
from ..policies import make_policy, policy_class
from ..prompts import PromptSet, load_prompt_set
from ..protocols import optional
from ..rewards import load_reward, load_reward_spec
from ..runfolder import RunLock
from . import diagnostics
from ..checkpoint import (
    EMA_PREFIX,
    ResumeError,
    atomic_write_text,
    ema_weights,
    find_checkpoint,
    has_checkpoint,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
)
from .ema import EMAWeights
from ..metrics import MetricsLog, Stopwatch
from .memory import enable_gradient_checkpointing, make_optimizer

# Recipe keys that may change when a run is resumed (they do not change what was computed so far).
RESUMABLE_CHANGES = ("train.iterations", "train.eval_every", "train.checkpoint_every", "train.report_to",
                     "train.gradient_checkpointing", "train.keep_checkpoints", "train.fsdp", "compare.algorithms",
                     "compare.any_model")


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (e.g. too many non-finite updates); message is one line."""


class InstrumentedAdapter:
    """A model adapter that counts network evaluations (images through the network) and times them. With
    `counts`, another instrumented adapter's, both add to one count (a frozen reference copy's forwards
    are part of what an algorithm costs)."""

    def __init__(self, adapter, stopwatch: Stopwatch, counts: "InstrumentedAdapter | None" = None):
        self._adapter, self._sw, self._counts, self.nfe = adapter, stopwatch, counts, 0

    def predict(self, x, *a, **k):
        (self._counts or self).nfe += x.shape[0]
        with self._sw("model"):
            return self._adapter.predict(x, *a, **k)

    def __getattr__(self, name):
        return getattr(self._adapter, name)


def _fp32(out):
    """A network output (a tensor, or a tuple whose first item is one: logits and a cache) with its tensor in fp32."""
    if isinstance(out, tuple):
        return (_fp32(out[0]), *out[1:])
    return out.float() if torch.is_tensor(out) and out.is_floating_point() else out


class AutocastAdapter:
    """A model adapter whose network forwards run under `autocast` (the run's mixed precision, from
    distributed.py) and return fp32 outputs: only the network computes in bf16/fp16, the step math and the
    log-probs after it stay fp32. Rollouts, updates and evaluation all call the network through one."""

    def __init__(self, adapter, autocast):
        self._adapter, self._autocast = adapter, autocast

    def predict(self, *a, **k):
        with self._autocast():
            return _fp32(self._adapter.predict(*a, **k))

    def __getattr__(self, name):
        return getattr(self._adapter, name)


class ShardedGenerator:
    """A generator (generate(prompts, seeds) -> uint8 images [N, H, W, 3]) run by every process together: each
    generates its contiguous part of the items (padded to equal parts, so all run as many network forwards, which
    FSDP needs) and every process gets all images, in order."""

    def __init__(self, generator, dist: Distributed):
        self.generator, self.dist = generator, dist

    def generate(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        n, w = len(prompts), self.dist.world_size
        pad = -n % w
        prompts, seeds = list(prompts) + [prompts[-1]] * pad, list(seeds) + [seeds[-1]] * pad
        part = self.dist.shard(n + pad)
        images = self.generator.generate(prompts[part], seeds[part])
        return self.dist.gather(torch.from_numpy(images)).numpy()[:n]


class Reference:
    """The frozen reference policy for KL terms: the base with LoRA off, or a frozen copy (full fine-tune).
    Called as reference(traj, steps) -> StepLogProb of sampled steps; .predict(x, t, prompts) for
    likelihood-free algorithms. Never carries gradients."""

    def __init__(self, policy, module, ref_policy=None):
        self.policy, self.module, self.ref_policy = policy, module, ref_policy

    @torch.no_grad()
    def __call__(self, traj, steps):
        if self.ref_policy is not None:
            return self.ref_policy.log_prob(traj, steps)
        with lora.adapters_disabled(self.module):
            return self.policy.log_prob(traj, steps)

    @torch.no_grad()
    def predict(self, x, t, prompts):
        if self.ref_policy is not None:
            return self.ref_policy.predict(x, t, prompts)
        with lora.adapters_disabled(self.module):
            return self.policy.predict(x, t, prompts)


class PromptSampler:
    """Train prompts of a prompt set (visalign/prompts.py): a category, then one of its prompts uniformly;
    each drawn prompt is repeated group_size times in a row (one group).

    curriculum "uniform": categories uniformly. "variance": categories in proportion to their running
    within-group reward variance (plus a floor), so rollouts go where a group's samples disagree, the only
    place group advantages carry signal; a category the model always (or never) gets right is drawn less.
    The statistics come from the gathered rewards, so every process draws the same prompts."""

    MOMENTUM = 0.7  # weight of the old statistic in the running variance
    FLOOR = 0.1  # every category keeps at least this fraction of the mean weight

    def __init__(self, seed: int, curriculum: str = "uniform", prompt_set: PromptSet | None = None):
        self.seed, self.curriculum = seed, curriculum
        prompt_set = prompt_set or load_prompt_set("geneval-s")
        self.categories = prompt_set.categories
        self.prompts = dict(prompt_set.train)
        self.category_of = {p: c for c, ps in self.prompts.items() for p in ps}
        self.spread: dict[str, float | None] = {c: None for c in self.categories}

    def weights(self) -> np.ndarray:
        """[n_categories] probabilities of the next draw."""
        if self.curriculum == "uniform":
            return np.full(len(self.categories), 1 / len(self.categories))
        seen = [v for v in self.spread.values() if v is not None]
        top = max(seen) if seen else 1.0
        w = np.array([top if self.spread[c] is None else self.spread[c] for c in self.categories])  # unseen: as the best
        w = w + self.FLOOR * (w.mean() if w.sum() > 0 else 1.0)
        return w / w.sum()

    def draw(self, iteration: int, n_groups: int, group_size: int) -> tuple[list[str], list[int], list[int]]:
        """-> prompts, per-sample seeds, per-group seeds (repeated per sample), all of length n x group."""
        rng = np.random.default_rng([self.seed, iteration])
        w = self.weights()
        prompts = []
        for _ in range(n_groups):
            n = len(self.categories)
            cat = self.categories[rng.integers(n) if self.curriculum == "uniform" else rng.choice(n, p=w)]
            p = self.prompts[cat][rng.integers(len(self.prompts[cat]))]
            prompts += [p] * group_size
        seeds = [int(s) for s in rng.integers(0, 2**62, size=n_groups * group_size)]
        group_seeds = [int(s) for s in rng.integers(0, 2**62, size=n_groups) for _ in range(group_size)]
        return prompts, seeds, group_seeds

    def observe(self, prompts: list[str], rewards: torch.Tensor, group_size: int) -> None:
        """Update the per-category running within-group variance from one batch's gathered rewards [B]."""
        if not bool(torch.isfinite(rewards).all()):  # a dropped batch (NaN rewards) says nothing about variance
            return
        var = rewards.float().view(-1, group_size).var(1, unbiased=False)  # [G]
        per: dict[str, list[float]] = {}
        for g, v in enumerate(var.tolist()):
            per.setdefault(self.category_of.get(prompts[g * group_size], ""), []).append(v)
        for c, vs in per.items():
            if c in self.spread:
                old = self.spread[c]
                new = float(np.mean(vs))
                self.spread[c] = new if old is None else self.MOMENTUM * old + (1 - self.MOMENTUM) * new

    def state_dict(self) -> dict:
        return {"spread": dict(self.spread)}

    def load_state_dict(self, state: dict) -> None:
        self.spread.update(state.get("spread", {}))


def _seed(*parts: int) -> int:
    return int(np.random.default_rng(list(parts)).integers(0, 2**62))


def lr_at(iteration: int, cfg: TrainConfig) -> float:
    """The learning rate of a 1-based iteration (math/schedules.py: lr_factor of the 0-based step)."""
    return cfg.lr * lr_factor(iteration - 1, cfg.iterations, cfg.warmup_iterations, cfg.lr_schedule)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(_flatten(v, key) if isinstance(v, dict) and k not in ("reward_options", "algorithm_options", "sampling") else {key: v})
    return out


class TrainingInterrupted(RuntimeError):
    """Ctrl-C stopped the run; message is one line naming the iteration and the checkpoint to resume from.
    resumable: whether a checkpoint was written (else the run starts again without --resume)."""

    def __init__(self, message: str, resumable: bool = False):
        super().__init__(message)
        self.resumable = resumable


def _unlocks_on_error(init):
    """A constructor that raises frees the run folder it locked at once (a caller may retry in this process),
    rather than when the half-built trainer is collected."""

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except BaseException:
            self.release_run()
            raise

    return wrapped


class Trainer:
    @_unlocks_on_error
    def __init__(self, recipe: TrainRecipe, resolved: dict, run: str | Path, resume: bool | str | Path = False,
                 dist: Distributed | None = None, log=print, progress: bool = True):
        self.recipe, self.resolved, self.run = recipe, resolved, Path(run)
        self.cfg = cfg = recipe.train
        self.dist = dist or Distributed()
        self.log = log if self.dist.is_main else (lambda *a, **k: None)
        self.progress = progress and self.dist.is_main
        self.sw = Stopwatch()
        per_rank = cfg.batch_size // self.dist.world_size
        if cfg.batch_size % self.dist.world_size or per_rank % cfg.minibatches:
            raise ValueError(
                f"train.batch_size={cfg.batch_size} over {self.dist.world_size} processes x train.minibatches="
                f"{cfg.minibatches} does not split evenly; accepted: batch_size a multiple of processes x minibatches"
            )
        self.run_lock = self._take_run_folder(resume)  # before anything reads or writes the folder
        if not resume and has_checkpoint(self.run):
            raise ResumeError(f"{self.run} already holds a run; pass --resume to continue it, or choose another --out")

        # the engine (accelerate): device, mixed precision, FSDP; DeepSpeed, a bad precision refused before loading
        self.dist.configure(cfg.mixed_precision, cfg.fsdp)
        if self.dist.fsdp and cfg.optimizer != "adamw":
            raise ValueError(f"train.optimizer={cfg.optimizer} does not run on FSDP's sharded parameters; accepted "
                             f"with FSDP: adamw")
        torch.manual_seed(cfg.seed)
        from ..models.registry import with_options  # the recipe's model_options, as reward_options are the reward's

        adapter = load_model(with_options(recipe.model, recipe.model_options))
        if not hasattr(adapter, "module"):
            raise ValueError(f"model '{recipe.model}' is not trainable (it has no network); choose a model adapter")
        if optional(adapter, "to") is not None:  # adapters with frozen parts (text encoders, VAE) move them too
            adapter.to(self.dist.device)
        self.adapter = adapter
        self.module = adapter.module.to(self.dist.device)
        if cfg.gradient_checkpointing:  # before LoRA and compile wrap the network; the backbone's own checkpointing
            enable_gradient_checkpointing(adapter, recipe.model)
        self.sampling = build(policy_class(adapter).Sampling, recipe.sampling, "sampling")
        self.instrumented = InstrumentedAdapter(AutocastAdapter(adapter, self.dist.autocast), self.sw)
        self.policy = make_policy(self.instrumented, self.sampling)
        self.reward = load_reward(recipe.reward, **recipe.reward_options)
        if hasattr(self.reward, "to"):  # learned rewards run where the policy does
            self.reward.to(self.dist.device)
        self.algorithm = load_algorithm(recipe.algorithm, recipe.algorithm_options)
        self.algorithm.check(self.policy, self.reward, self.sampling)
        self.pairs = self._pairs_dataset(recipe, per_rank)
        if cfg.keep_best_worst:
            kept = per_rank // cfg.group_size * 2 * cfg.keep_best_worst
            if self.pairs is not None or self.algorithm.keeps_groups:
                raise ValueError(f"train.keep_best_worst subsamples groups of on-policy rollouts; {self.algorithm.name} "
                                 f"trains on whole groups or pairs: set it to 0")
            if per_rank % cfg.group_size or kept % cfg.minibatches:
                raise ValueError(f"train.keep_best_worst={cfg.keep_best_worst}: each of the {self.dist.world_size} "
                                 f"processes must hold whole groups of {cfg.group_size} and keep a multiple of "
                                 f"train.minibatches={cfg.minibatches} samples (it keeps {kept} of {per_rank})")

        if cfg.finetune == "lora":
            self.params = lora.add_lora(self.module, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
            self.ref_policy = None
        else:
            self.params = [p for p in self.module.parameters() if p.requires_grad]
            self.ref_policy = None
            if self.algorithm.uses_reference:
                ref_adapter = copy.deepcopy(adapter)
                ref_adapter.module.requires_grad_(False)
                ref = AutocastAdapter(ref_adapter, self.dist.autocast)
                self.ref_policy = make_policy(InstrumentedAdapter(ref, self.sw, self.instrumented), self.sampling)
        # FSDP (distributed.py): shard the network per block, and the reference copy too; the Parameters change
        methods = tuple(optional(adapter, "network_methods"))  # the module's methods the adapter calls
        self.params = self.dist.shard_network(self.module, self.params, methods)
        if self.ref_policy is not None:
            self.dist.shard_network(ref_adapter.module, [], methods)
        if self.dist.fsdp:
            held, total = self.dist.held_elements(self.params)
            self.log(f"FSDP over {self.dist.world_size} processes: the main process holds {held:,} of the "
                     f"{total:,} trained parameter elements")
        if cfg.compile:  # in place (nn.Module.compile): parameters and state_dict keys stay as they are
            backends = [b for b in torch._dynamo.list_backends(exclude_tags=()) if not b.endswith("TESTING_ONLY")]
            if cfg.compile_backend not in backends:
                raise ValueError(f"train.compile_backend '{cfg.compile_backend}' is not a torch.compile backend; "
                                 f"available: {', '.join(backends)}")
            for net in [self.module] + ([ref_adapter.module] if self.ref_policy else []):
                net.compile(backend=cfg.compile_backend, dynamic=False)
        self.reference = Reference(self.policy, self.module, self.ref_policy)
        self.optimizer = make_optimizer(self.params, cfg)  # train.optimizer: adamw | adamw8bit
        decay = self.algorithm.old_ema
        self.old = EMAWeights(self.params, decay) if decay is not None else None  # the algorithm's old model
        # the averaged weights evaluation and export use: RL steps are noisy, their average is less so
        self.ema = EMAWeights(self.params, cfg.ema_decay) if cfg.ema_decay else None
        self.prompt_set = load_prompt_set(recipe.prompts)
        self.judges = self._judges(recipe) if self.dist.is_main else {}
        self.prompts = PromptSampler(cfg.seed, cfg.curriculum, self.prompt_set)
        self.iteration, self.nfe, self.wall, self.bad_updates = 0, 0, 0.0, 0
        self.diag_cos: list[float] = []  # half-split gradient cosines measured so far

        if resume:
            self._restore(resume)
        elif self.dist.is_main:
            self.run.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()
        if self.dist.is_main:
            atomic_write_text(self.run / "recipe.json", json.dumps(resolved, indent=2))
            from ..report import package_versions  # the report's versions section (of the latest start)

            atomic_write_text(self.run / "versions.json", json.dumps(package_versions(), indent=2))
        self.metrics = MetricsLog(self.run, enabled=self.dist.is_main, resume_iteration=self.iteration if resume else None,
                                  report_to=cfg.report_to, recipe=resolved)

    def _take_run_folder(self, resume) -> RunLock | None:
        """The main process locks the run folder for the run's lifetime (a second trainer on it is refused in
        one line) and removes what a killed run left half written. A folder to resume must exist already
        (_restore says so); other ranks write nothing there."""
        if not self.dist.is_main or (resume and not self.run.is_dir()):
            return None
        self.run.mkdir(parents=True, exist_ok=True)
        lock = RunLock(self.run)
        removed = remove_stale_temps(self.run)
        if removed:
            self.log(f"note: removed what a stopped run left half written in {self.run}: {', '.join(removed)}")
        return lock

    def release_run(self) -> None:
        """Unlock the run folder (train() does it when it ends, however it ends)."""
        lock = getattr(self, "run_lock", None)
        if lock is not None:
            lock.release()

    def _judges(self, recipe) -> dict:
        """The rewards that judge held-out samples beside the training reward: the recipe's eval.judges (each
        must load), or the prompt set's defaults (one that does not load, e.g. a hub model not in the cache,
        is left out with a note)."""
        explicit = recipe.eval.judges is not None
        specs = recipe.eval.judges if explicit else monitor.default_judges(recipe.prompts, recipe.reward,
                                                                           recipe.reward_options)
        judges = {}
        for spec in specs:
            try:
                judges[spec] = load_reward_spec(spec).to(self.dist.device)
            except (ValueError, KeyError, OSError, RuntimeError) as e:
                if explicit:
                    raise ValueError(f"eval.judges: '{spec}' does not load: {e}") from None
                self.log(f"note: default judge '{spec}' left out ({str(e).splitlines()[0]}); set eval.judges to choose")
        return judges

    def _pairs_dataset(self, recipe, per_rank: int):
        """Offline algorithms read pairs from recipe.data (groups of 2: chosen, rejected); pair-coupled losses
        need whole groups in every minibatch and micro-batch."""
        from ..pairs import PairDataset

        cfg, algo = self.cfg, self.algorithm
        if algo.keeps_groups and (per_rank % (cfg.group_size * cfg.minibatches) or cfg.micro_batch % cfg.group_size):
            raise ValueError(
                f"{algo.name} pairs samples within a group, so minibatches and micro-batches must hold whole groups: "
                f"batch_size per process {per_rank} must be a multiple of group_size x minibatches = "
                f"{cfg.group_size} x {cfg.minibatches}, and micro_batch ({cfg.micro_batch}) a multiple of group_size"
            )
        if not algo.offline:
            if recipe.data:
                raise ValueError(f"data='{recipe.data}' is only read by offline algorithms (diffusion_dpo); "
                                 f"{algo.name} trains on its own rollouts")
            return None
        if not recipe.data:
            raise ValueError(f"{algo.name} trains on a pairs dataset: set data=DIR (made by `visalign make-pairs`)")
        if cfg.group_size != 2:
            raise ValueError(f"{algo.name} trains on pairs: set train.group_size=2, got {cfg.group_size}")
        return PairDataset(recipe.data)

    # ---------------------------------------------------------------------------------------- the loop

    def train(self) -> list[dict]:
        """Train to train.iterations (or the budget) -> the metrics records. Ctrl-C ends it as TrainingInterrupted,
        naming where it stopped and the checkpoint it resumes from; the run folder is unlocked however it ends."""
        try:
            return self._train()
        except KeyboardInterrupt:
            raise self._interrupted() from None
        finally:
            self.release_run()

    def _interrupted(self) -> TrainingInterrupted:
        """Where a Ctrl-C left the run: the iteration it was in and the checkpoint --resume goes on from."""
        try:
            ck = find_checkpoint(self.run)[0].name
        except ResumeError:  # none written yet: the run starts again from the beginning
            return TrainingInterrupted(f"interrupted at iteration {self.iteration + 1}, before the first checkpoint")
        return TrainingInterrupted(f"interrupted at iteration {self.iteration + 1}; the last checkpoint is {ck}",
                                   resumable=True)

    def _train(self) -> list[dict]:
        cfg = self.cfg
        records = []
        if self.iteration == 0:
            rec = {"iteration": 0, "reward_mean": None, "loss": None, "nfe": 0, "wall_s": 0.0, **self.evaluate(0)}
            rec.update({f"time_{k}_s": round(v, 4) for k, v in self.sw.pop().items()})
            self.metrics.write(rec)
            records.append(rec)
            exact = (f", exact reading {rec['eval_exact']:.3f}, extra objects {rec['eval_extra']:.2f}"
                     if "eval_exact" in rec else "")
            self.log(f"iteration 0: held-out {self.eval_label} {rec.get('eval_overall', float('nan')):.3f}{exact}")
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.iterations, initial=self.iteration, desc="train", dynamic_ncols=True)
        try:
            for it in range(self.iteration + 1, cfg.iterations + 1):
                nfe_before = self.nfe
                rec = self.train_iteration(it)
                rec["wall_s"] = round(self.wall + sum(rec.pop("_times").values()), 3)
                last = it == cfg.iterations or self.budget_spent(rec)
                by_nfe = cfg.eval_every_nfe and self.nfe // cfg.eval_every_nfe > nfe_before // cfg.eval_every_nfe
                if it % cfg.eval_every == 0 or last or by_nfe:
                    rec.update(self.evaluate(it))
                rec.update({f"time_{k}_s": round(v, 4) for k, v in self.sw.pop().items()})
                self.wall = rec["wall_s"]
                self.iteration = it
                self.metrics.write(rec)
                records.append(rec)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(reward=f"{rec['reward_mean']:.3f}", **({"eval": f"{rec['eval_overall']:.3f}"} if "eval_overall" in rec else {}))
                if it % cfg.checkpoint_every == 0 or last:
                    self.save()
                if last:
                    break
        finally:
            if bar is not None:
                bar.close()
            self.metrics.close()
        return records

    def budget_spent(self, rec: dict) -> bool:
        """train.budget_nfe / budget_minutes reached (decided together: wall times differ between ranks)."""
        cfg = self.cfg
        spent = (cfg.budget_nfe and rec["nfe"] >= cfg.budget_nfe) or (
            cfg.budget_minutes and rec["wall_s"] >= 60 * cfg.budget_minutes)
        if spent:
            rec["budget_spent"] = True
        return self.dist.all_reduce_mean(torch.tensor(float(bool(spent)))).item() > 0

    # ----------------------------------------------------------------------------------- one iteration

    def train_iteration(self, it: int) -> dict:
        start = time.perf_counter()
        nfe0 = self.instrumented.nfe
        traj, prompts_all, rewards_all, local = self.rollout(it)
        rec = {"iteration": it, "reward_mean": float(rewards_all.mean()), "reward_std": float(rewards_all.std(unbiased=False))}
        rec.update(getattr(self, "reward_details", {}) if self.pairs is None else {})  # per-component means (combine)
        if not bool(torch.isfinite(rewards_all).all()):
            self._bad(f"iteration {it}: non-finite reward; update skipped")
            rec["loss"] = None
        else:
            with self.sw("advantages"):
                adv_all = self.algorithm.advantages(rewards_all.cpu(), prompts_all, self.cfg.group_size)
            if self.cfg.diagnose_every and it % self.cfg.diagnose_every == 0:
                with self.sw("diagnose"):
                    rec.update(self.diagnose(it, traj, rewards_all.cpu(), adv_all, local))
            adv = adv_all[local]
            if self.cfg.keep_best_worst and self.pairs is None:  # DanceGRPO's best-of-N: the extremes of each group
                traj, adv = self.best_worst(traj, rewards_all.cpu(), adv_all, local)
            with self.sw("update"):
                rec.update(self.update(it, traj, adv.to(self.dist.device)))
        local_nfe = torch.tensor(float(self.instrumented.nfe - nfe0))
        self.nfe += int(self.dist.all_reduce_mean(local_nfe).item() * self.dist.world_size)
        rec["nfe"] = self.nfe
        rec["lr"] = lr_at(it, self.cfg)
        rec["_times"] = {"iteration": time.perf_counter() - start}  # training only: evaluation is not wall time
        return rec

    def best_worst(self, traj, rewards_all: torch.Tensor, adv_all: torch.Tensor, local: slice):
        """The local samples among each group's train.keep_best_worst best and worst (chosen on the whole batch, so
        every process keeps the same global samples as one process would), with their advantages."""
        keep = best_worst_rows(rewards_all, self.cfg.group_size, self.cfg.keep_best_worst)  # [G * 2k] global
        mine = keep[(keep >= local.start) & (keep < local.stop)]  # [n_local] global rows of this process
        sub = traj.select(mine - local.start)
        sub.extras["group_size"] = 2 * self.cfg.keep_best_worst
        return sub, adv_all[mine]

    def _bad(self, message: str) -> None:
        self.bad_updates += 1
        self.log(f"warning: {message} ({self.bad_updates} in a row, stop at {self.cfg.max_bad_updates})")
        if self.bad_updates >= self.cfg.max_bad_updates:
            raise TrainingStopped(
                f"stopped after {self.bad_updates} consecutive non-finite updates (train.max_bad_updates="
                f"{self.cfg.max_bad_updates}); lower train.lr or check the reward"
            )

    # ----------------------------------------------------------------------------------------- rollout

    def rollout(self, it: int):
        if self.pairs is not None:
            return self.offline_batch(it)
        cfg = self.cfg
        prompts_all, seeds_all, group_seeds = self.prompts.draw(it, cfg.batch_size // cfg.group_size, cfg.group_size)
        local = self.dist.shard(cfg.batch_size)
        sampling = self.algorithm.rollout_sampling(self.sampling, it, torch.Generator().manual_seed(_seed(cfg.seed, it)))
        init = group_seeds[local] if cfg.shared_initial_noise else None
        with self.sw("rollout"):
            traj = self.policy.sample(prompts_all[local], seeds_all[local], sampling, init_seeds=init)
        traj.extras["group_size"] = cfg.group_size
        # the reward sees the grouping (samples of one prompt), for per-group normalisation (rewards/combine.py)
        meta = {"group_size": cfg.group_size, "group_ids": torch.arange(cfg.batch_size)[local] // cfg.group_size}
        with self.sw("reward"):
            out = self.reward(traj.images, traj.prompts, meta)
        scores = out.scores.float().to(self.dist.device)
        rewards_all = self.dist.gather(scores)  # [B_global]
        self.reward_details = {f"reward_{k}": float(self.dist.all_reduce_mean(v.detach().float().mean().cpu()))
                               for k, v in out.details.items() if isinstance(v, torch.Tensor) and v.shape == scores.shape}
        self.prompts.observe(prompts_all, rewards_all.cpu(), cfg.group_size)
        return traj, prompts_all, rewards_all, local

    def offline_batch(self, it: int):
        """An offline algorithm's 'rollout': batch_size / 2 pairs of the dataset as groups of 2 (the same
        global draw on every process), their preference as the rewards."""
        with self.sw("rollout"):
            images, prompts_all, pref, seeds = self.pairs.batch(self.cfg.seed, it, self.cfg.batch_size // 2)
            local = self.dist.shard(self.cfg.batch_size)
            traj = self.policy.from_images(images[local], prompts_all[local], seeds[local])
        traj.extras["group_size"] = 2
        return traj, prompts_all, pref.to(self.dist.device), local

    # ----------------------------------------------------- advantages: the gradient-signal diagnostics

    def diagnose(self, it: int, traj, rewards_all, adv_all, local, warn: bool = True) -> dict:
        """Signal share of this update: the cosine between the gradients of the even and the odd groups
        (disjoint rollouts, same parameters), per window of steps; plus reward statistics (diagnostics.py)."""
        g = self.cfg.group_size
        rec = diagnostics.reward_stats(rewards_all, g)
        rec["diag_ess"] = diagnostics.advantage_ess(adv_all)
        n_groups = len(rewards_all) // g
        windows = self.algorithm.diagnostic_windows(traj)
        if n_groups < 2 or not windows:
            return rec
        adv = adv_all[local].to(self.dist.device)
        group = torch.arange(local.start, local.stop) // g  # [B_local] global group index
        halves = []
        for h in (0, 1):
            idx = torch.nonzero(group % 2 == h).flatten()
            n_half = g * len(range(h, n_groups, 2))
            halves.append(self.window_grads(traj.select(idx), adv[idx], windows, len(idx) / n_half, spare=traj))
        for i, (a, b) in enumerate(zip(*halves)):
            rec[f"diag_cos_{diagnostics.window_name(i, len(windows))}"] = diagnostics.cosine(a, b)
        cos = diagnostics.cosine(sum(halves[0]), sum(halves[1]))
        rec["diag_grad_cos"], rec["diag_signal_share"] = cos, diagnostics.combined_share(cos)
        # one split is a noisy estimate of a small number: judge the run by the mean over its diagnostics,
        # and warn only when even its upper confidence bound adds up to too little over the run
        self.diag_cos.append(cos)
        share = diagnostics.combined_share(float(np.mean(self.diag_cos)))
        rec["diag_signal_share_mean"] = share
        rec["diag_run_signal_share"] = diagnostics.run_share(share, self.optimizer_steps)
        upper = diagnostics.upper_cosine(self.diag_cos)
        if warn and upper is not None:
            self.warn_low_signal(it, diagnostics.combined_share(upper), bound=True)
        return rec

    def window_grads(self, traj, advantages, windows: list[list[int]], weight: float,
                     spare=None) -> list[torch.Tensor]:
        """The flat gradient of the algorithm's reward-driven loss (Algorithm.signal_loss) on `traj`, one per
        window of steps (they sum to the gradient over all those steps), times `weight`, summed over ranks.
        spare: samples of this process for FSDP's zero-weight passes (idle_pass) when `traj` may be empty."""
        algo, n_steps, out = self.algorithm, sum(len(w) for w in windows), []
        micro = -(-len(traj) // (self.cfg.micro_batch or len(traj))) if len(traj) else 0  # micro-batches per window
        extra = self.dist.lockstep(micro) - micro  # FSDP: as many forwards as the process with the most samples
        for window in windows:
            self.optimizer.zero_grad(set_to_none=True)
            for rows, chunk, w in self.pieces(len(traj), window) if len(traj) else []:
                part = traj if len(rows) == len(traj) else traj.select(rows)
                loss = algo.signal_loss(self.policy, part, advantages[rows], chunk,
                                        old=self.old.swapped if self.old else None)
                with self.sw("model"):
                    (loss * weight * w * len(window) / n_steps).backward()
            for _ in range(extra):
                self.idle_pass(spare if spare is not None else traj, window)
            out.append(self.dist.summed_gradient(self.params))
        self.optimizer.zero_grad(set_to_none=True)
        return out

    def idle_pass(self, traj, window: list[int]) -> None:
        """One micro-batch's forwards and backwards over `window` with zero weight (one sample, or one group for
        algorithms that pair a group's samples): under FSDP a process with fewer samples runs them to stay in
        step with the others; the gradient is unchanged, and so is the run's NFE (as without FSDP)."""
        n = self.cfg.group_size if self.algorithm.keeps_groups else 1
        part, adv = traj.select(torch.arange(n)), torch.zeros(n, device=self.dist.device)
        nfe = self.instrumented.nfe
        for _, chunk, _ in self.pieces(n, window):
            loss = self.algorithm.signal_loss(self.policy, part, adv, chunk, old=self.old.swapped if self.old else None)
            with self.sw("model"):
                (loss * 0.0).backward()
        self.instrumented.nfe = nfe

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps the whole run takes."""
        return self.cfg.iterations * self.cfg.epochs * self.cfg.minibatches

    def warn_low_signal(self, it: int, update_share: float, bound: bool = False) -> None:
        warning = diagnostics.low_signal_warning(update_share, self.optimizer_steps, self.cfg.lr,
                                                 self.cfg.min_signal_share, bound)
        if warning:
            self.log(f"iteration {it}: {warning}")

    def measure_signal(self, batches: int) -> dict:
        """`visalign diagnose`: `batches` independent rollout batches at the current parameters, no update.
        The mean pairwise cosine of their gradients is the signal share of one update (overall and per
        window of steps); the reward statistics are averaged over batches. One set of numbers (the in-run
        diagnostics' within-batch estimates of the same share are left out): diagnostics.rounded() gives what
        the command prints and writes."""
        if batches < 2:
            raise ValueError(f"--batches must be >= 2 to compare independent gradients, got {batches}")
        grads, windows_seen, per_batch = [], [], []
        for b in range(1, batches + 1):
            traj, prompts_all, rewards_all, local = self.rollout(b)
            adv_all = self.algorithm.advantages(rewards_all.cpu(), prompts_all, self.cfg.group_size)
            stats = self.diagnose(b, traj, rewards_all.cpu(), adv_all, local, warn=False)
            per_batch.append({"reward_mean": float(rewards_all.mean()), **stats})
            windows = self.algorithm.diagnostic_windows(traj)
            adv = adv_all[local].to(self.dist.device)
            grads.append(self.window_grads(traj, adv, windows, len(traj) / self.cfg.batch_size))
            windows_seen.append(windows)
        pairs = [(i, j) for i in range(batches) for j in range(i + 1, batches)]
        out = {k: float(np.mean([r[k] for r in per_batch])) for k in diagnostics.BATCH_STATS}
        out["signal_share"] = float(np.mean([diagnostics.cosine(sum(grads[i]), sum(grads[j])) for i, j in pairs]))
        if all(w == windows_seen[0] for w in windows_seen):  # per-window shares need the same steps in each batch
            for w in range(len(windows_seen[0])):
                name = diagnostics.window_name(w, len(windows_seen[0]))
                cos = [diagnostics.cosine(grads[i][w], grads[j][w]) for i, j in pairs]
                out[f"signal_share_{name}"] = float(np.mean(cos))
        out["batch_for_half_signal"] = diagnostics.batch_multiplier(out["signal_share"]) * self.cfg.batch_size
        out["optimizer_steps"] = self.optimizer_steps
        out["run_signal_share"] = diagnostics.run_share(out["signal_share"], self.optimizer_steps)
        out["batches"], out["batch_size"], out["nfe"] = batches, self.cfg.batch_size, self.instrumented.nfe
        out["warning"] = diagnostics.low_signal_warning(max(out["signal_share"], 0.0), self.optimizer_steps,
                                                        self.cfg.lr, self.cfg.min_signal_share)
        return out

    # ------------------------------------------------------------------------------------------ update

    def update(self, it: int, traj, advantages: torch.Tensor) -> dict:
        """epochs x minibatches optimizer steps over the minibatches of minibatch_rows()."""
        cfg, algo = self.cfg, self.algorithm
        b = len(traj)
        losses, stats = [], {}
        for epoch in range(cfg.epochs):
            gen = torch.Generator().manual_seed(_seed(cfg.seed, it, epoch))
            for k in range(cfg.minibatches):
                idx = self.minibatch_rows(b, k)
                sub, adv = traj.select(idx), advantages[idx]
                steps = algo.train_steps(sub, gen)
                self.optimizer.zero_grad(set_to_none=True)
                total = 0.0
                for rows, chunk, weight in self.pieces(len(sub), steps):
                    ref = self.reference if algo.uses_reference else None
                    part = sub if len(rows) == len(sub) else sub.select(rows)
                    loss, m = algo.step_loss(self.policy, part, adv[rows], chunk, ref,
                                             old=self.old.swapped if self.old else None)
                    with self.sw("model"):
                        self.dist.backward(loss * weight)  # fp16: scaled
                    total += loss.item() * weight
                    for key, v in m.items():
                        stats.setdefault(key, []).append(v)
                # the model ran many times outside any DDP wrapper: sync once, now (distributed.py says why)
                self.dist.reduce_gradients(self.params)
                gnorm = self.dist.clip_grad_norm_(self.optimizer, self.params, cfg.grad_clip)  # fp16: unscaled first
                finite = torch.tensor([float(math.isfinite(total)), float(bool(torch.isfinite(gnorm)))])  # [2]
                loss_ok, grad_ok = (self.dist.all_reduce_mean(finite) == 1).tolist()  # every rank decides together
                if not loss_ok or not (grad_ok or self.dist.scales_loss):  # fp16 overflow: the scaler's to skip
                    self.optimizer.zero_grad(set_to_none=True)
                    self._bad(f"iteration {it}: non-finite loss or gradient ({total}); update skipped")
                    continue
                for g in self.optimizer.param_groups:
                    g["lr"] = lr_at(it, cfg)
                if not self.dist.step(self.optimizer):  # fp16: inf gradients, the scaler lowered its scale
                    self.optimizer.zero_grad(set_to_none=True)
                    continue
                for average in (self.old, self.ema):
                    if average is not None:
                        average.update()
                self.bad_updates = 0
                losses.append(total)
                stats.setdefault("grad_norm", []).append(float(gnorm))
        out = {k: float(np.mean(v)) for k, v in stats.items()}
        out["loss"] = float(self.dist.all_reduce_mean(torch.tensor(np.mean(losses) if losses else float("nan"))))
        return out

    def minibatch_rows(self, b: int, k: int) -> torch.Tensor:
        """The local samples of minibatch k of M: those j with j mod M == k, or, for algorithms whose loss
        couples a group's samples, the whole groups g with g mod M == k."""
        m = self.cfg.minibatches
        if not self.algorithm.keeps_groups:
            return torch.arange(k, b, m)
        g = self.cfg.group_size
        return (torch.arange(k, b // g, m)[:, None] * g + torch.arange(g)).flatten()

    def pieces(self, n: int, steps: list[int]):
        """Split the loss over n samples x the trained steps into network forwards: micro-batches of
        train.micro_batch samples x chunks of train.step_chunk steps (0: all at once). -> (sample rows [k],
        steps, weight of that piece's mean loss in the whole mean)."""
        m = self.cfg.micro_batch or n or 1
        c = self.cfg.step_chunk or len(steps) or 1
        for i in range(0, n, m):
            rows = torch.arange(i, min(i + m, n))
            for j in range(0, len(steps), c):
                chunk = steps[j : j + c]
                yield rows, chunk, len(rows) / n * len(chunk) / len(steps)

    # ---------------------------------------------------------------------------------------- evaluate

    @property
    def eval_label(self) -> str:
        """What eval_overall is: the score of the prompt set's evaluator (GenEval-S: its verifier's), or the mean
        reward on a prompt set without one."""
        return self.prompt_set.score_label or f"mean {self.recipe.reward} reward"

    def evaluate(self, it: int) -> dict:
        """Held-out prompts with the deterministic sampler: every process generates its part of the images (FSDP
        needs all in every forward), the main process scores them. A prompt set with an evaluator (GenEval-S: its
        verifier) is scored by it, other prompt sets by the run's reward (eval_overall is then its mean)."""
        out = {}
        with self.sw("eval"), torch.no_grad(), self.ema.swapped() if self.ema else nullcontext():
            net = AutocastAdapter(self.adapter, self.dist.autocast)  # the run's mixed precision
            gen = ShardedGenerator(PolicyGenerator(net, self.recipe.eval.steps, self.recipe.eval.guidance,
                                                   validate=self.prompt_set.verifier), self.dist)
            if not self.dist.is_main:  # generate the same items as the main process's evaluate() below
                gen.generate(*self._eval_prompts())
            else:
                if self.prompt_set.verifier:
                    res = self.prompt_set.evaluator(gen, self.cfg.eval_per_category, self.cfg.eval_seed,
                                                    return_images=True)
                else:
                    res = evaluate_reward(gen, self.reward, self.prompt_set, self.cfg.eval_per_category,
                                          self.cfg.eval_seed)
                self._save_samples(it, res)
                series = self.judge(res)
        if self.dist.is_main:
            out = {"eval_overall": res["overall"], "eval_categories": res["categories"],
                   "eval_diversity": diversity(res["images"], res["prompts"]),
                   "eval_reward": float(series["reward"].mean())}
            if "exact" in res:  # GenEval-S: the exact reading and objects nobody asked for beside GenEval's rules
                out.update({f"eval_{k}": res[k] for k in ("exact", "exact_categories", "extra", "extra_categories",
                                                          "stray", "partial")})
            if self.judges:
                out["eval_judges"] = {spec: float(series[spec].mean()) for spec in self.judges}
            warning = self.watch(it, series, res["prompts"])
            if warning:
                out["eval_hacking"] = warning
                self.log(f"iteration {it}: warning: {warning}")
        self.dist.barrier()
        return out

    def _eval_prompts(self) -> tuple[list[str], list[int]]:
        """The prompts and seeds the set's evaluator or evaluate_reward() (sets without one) generates: the set's
        eval items (an evaluator evaluates them: geneval-s:CAT trains on CAT and evaluates all six)."""
        k, seed = self.cfg.eval_per_category, self.cfg.eval_seed
        items = self.prompt_set.eval_items(k, seed)
        _, prompts, seeds = zip(*items)
        return list(prompts), list(seeds)

    def judge(self, res: dict) -> dict[str, np.ndarray]:
        """Per-image scores [N] of the evaluated images: the training reward, the prompt set's own readings
        (GenEval-S: rules, exact, extra objects) and every judge."""
        scores = res.get("scores")  # a set without a verifier was scored by the training reward already
        series = {"reward": scores if scores is not None else reward_scores(self.reward, res["images"], res["prompts"])}
        series.update(res.get("readings", {}))
        for spec, judge in self.judges.items():
            series[spec] = reward_scores(judge, res["images"], res["prompts"])
        return series

    def watch(self, it: int, series: dict[str, np.ndarray], prompts: list[str]) -> str | None:
        """Keep this evaluation's per-image scores (RUN/evals/iter-N.json) and compare them with the base
        model's (iteration 0): the hacking warning, or None."""
        path = self.run / "evals" / f"iter-{it:06d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"iteration": it, "prompts": prompts,
                                            "series": {k: v.tolist() for k, v in series.items()}}))
        base_path = self.run / "evals" / f"iter-{0:06d}.json"
        if it == 0 or not base_path.exists():
            return None
        base = {k: np.asarray(v) for k, v in json.loads(base_path.read_text())["series"].items()}
        options = f" {json.dumps(self.recipe.reward_options)}" if self.recipe.reward_options else ""
        labels = {"reward": f"the training reward ({self.recipe.reward}{options})", **self.prompt_set.readings,
                  **{spec: f"judge {spec}" for spec in self.judges}}
        return monitor.hacking_warning(base, series, labels, lower_is_better=self.prompt_set.lower_is_better)

    def _save_samples(self, it: int, res: dict) -> None:
        """A fixed grid for the report: the first 8 eval images of each category (same prompts and seeds
        at every evaluation); for videos also an animated GIF of that grid."""
        k = self.cfg.eval_per_category
        pick = [c * k + i for c in range(len(res["categories"])) for i in range(min(8, k))]
        grid = self.run / "samples" / f"iter-{it:06d}.png"
        save_samples(res["images"][pick], grid, cols=min(8, k))  # videos: frame strips here, a GIF beside
        self.metrics.log_image("eval_samples", grid, it)  # the trackers' image slider: before (0) -> after
        if it == 0 or not (self.run / "samples" / "prompts.json").exists():
            atomic_write_text(self.run / "samples" / "prompts.json", json.dumps([res["prompts"][i] for i in pick]))

    # ------------------------------------------------------------------------------- checkpoint/resume

    def save(self) -> None:
        """A checkpoint of the run: every process gathers (FSDP's shards), the main process writes."""
        weights, optimizer = self.trainable_state(), self.dist.full_optimizer_state(self.optimizer)
        extra = {**(self.dist.full_state(self.old.state_dict()) if self.old else {}),
                 **(self.ema_state() if self.ema else {})}
        if self.dist.is_main:
            state = {"nfe": self.nfe, "wall_s": self.wall, "bad_updates": self.bad_updates, "diag_cos": self.diag_cos,
                     "algorithm": self.algorithm.state_dict(), "recipe": self.resolved}
            state["prompt_sampler"] = self.prompts.state_dict()
            save_checkpoint(self.run, self.iteration, weights, optimizer, state, keep=self.cfg.keep_checkpoints,
                            extra=extra or None)
        self.dist.barrier()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trained weights, whole, on the main process ({} on the others; every process calls: FSDP gathers)."""
        if self.cfg.finetune == "lora":
            return lora.lora_state_dict(self.module, self.dist.full_state(lora.lora_tensors(self.module)))
        return self.dist.full_state(self.module.state_dict())

    def load_trainable_state(self, weights: dict[str, torch.Tensor]) -> None:
        """trainable_state()'s weights (whole, on every process) into the network (FSDP: each process's part)."""
        if self.cfg.finetune == "lora":
            lora.load_lora_state_dict(self.module, weights, place=self.dist.local_state)
        else:
            self.module.load_state_dict(self.dist.local_state(weights, self.module.state_dict()))

    def ema_state(self) -> dict[str, torch.Tensor]:
        """trainable_state() with the EMA weights in place: saved under these names, so export reads them as
        it reads the weights."""
        with self.ema.swapped():
            return {f"{EMA_PREFIX}{k}": v.detach().clone() for k, v in self.trainable_state().items()}

    def _restore(self, resume: bool | str | Path = True) -> None:
        """resume: True (or "latest") for the run's newest complete checkpoint, or a checkpoint folder of the run
        (its name, iter-NNNNNN, or its path): the run continues from there, as if it had stopped there."""
        ck, note = find_checkpoint(self.run, None if resume is True else resume)
        if note:  # `latest` was lost to a crash: say which checkpoint the run goes on from
            self.log(f"note: {note}")
        weights, opt_state, state = load_checkpoint(self.run, ck)
        before, now = _flatten(state["recipe"]), _flatten(json.loads(json.dumps(self.resolved)))  # tuples -> lists
        # a train.* or eval.* setting added after the run was made is no change at its default
        default = _flatten(json.loads(json.dumps({"train": asdict(TrainConfig()), "eval": asdict(EvalConfig())})))
        diff = sorted(k for k in set(before) | set(now)
                      if before.get(k, default.get(k)) != now.get(k) and k not in RESUMABLE_CHANGES)
        if diff:
            raise ResumeError(
                f"cannot resume {self.run}: it was made by another recipe or settings (differs in {', '.join(diff[:5])}); "
                f"only {', '.join(RESUMABLE_CHANGES)} may change on resume"
            )
        if self.ema is not None:  # the averaged weights go through the network once, to become the shadow
            self.load_trainable_state(ema_weights(state["extra"]))
            self.ema = EMAWeights(self.params, self.cfg.ema_decay)
        self.load_trainable_state(weights)
        self.dist.load_optimizer_state(self.optimizer, opt_state)
        self.algorithm.load_state_dict(state["algorithm"])
        self.prompts.load_state_dict(state.get("prompt_sampler", {}))
        if self.old is not None:
            self.old.load_state_dict(self.dist.local_state(state["extra"], self.old.state_dict()))
        self.iteration, self.nfe = state["iteration"], state["nfe"]
        self.wall, self.bad_updates = state["wall_s"], state["bad_updates"]
        self.diag_cos = list(state.get("diag_cos", []))
        if self.iteration >= self.cfg.iterations:
            raise ResumeError(
                f"cannot resume {self.run}: it already ran {self.iteration} of train.iterations={self.cfg.iterations}; "
                f"raise train.iterations to continue"
            )
        if self.dist.is_main:  # `latest` names where the run now goes on from (a lost pointer is repaired)
            atomic_write_text(ck.parent / "latest", ck.name + "\n")

