"""Everything that knows about processes, ranks and devices: the only module that imports torch.distributed or
accelerate. The trainer asks it; algorithms never do. The engine is an `accelerate.Accelerator`, configured the
accelerate way (`accelerate config`, `accelerate launch` flags and their ACCELERATE_* variables) plus two recipe
keys, train.mixed_precision and train.fsdp. A plain `python` / `visalign train` run is one process.

Launch:
  GPUs: accelerate launch --multi_gpu --num_processes N -m visalign.cli train RECIPE ...  (or torchrun)
  CPU:  ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N ...  (gloo; `--cpu
        --num_processes N` starts ONE process), or torchrun --standalone --nproc_per_node N
Mixed precision: `accelerate launch --mixed_precision bf16` (ACCELERATE_MIXED_PRECISION) or the recipe's
  train.mixed_precision = no | bf16 | fp16 (unset: as launched). The recipe's wins over the launcher's "no" (its
  default, indistinguishable from an explicit one); any other disagreement is refused. The network's forwards
  (rollouts, updates, evaluation) run under accelerate's autocast on fp32 master weights; their outputs are cast
  back to fp32, so the step math and log-probs stay fp32. fp16 adds accelerate's grad scaler and needs a GPU
  (accelerate runs neither fp16 autocast nor a scaler on CPU); bf16 works on CPU too.
Gradients (DDP semantics without a DDP wrapper): one optimizer step calls the network many times (micro-batches,
  chunks of steps, the reference with LoRA off, the old model's swapped-in weights), through the policy's adapter
  rather than a wrapper, and some of those forwards are not part of the loss: DDP's reducer, which fires from
  hooks during the backward of forwards through its wrapper, would sync on the wrong forwards or not at all. So
  the trainer calls reduce_gradients() once per optimizer step after all its backwards: accelerate's
  reduce(mean) over buckets of the gradients, written back in place. N processes with B/N samples each then
  take exactly the step one process takes with B.
FSDP (full fine-tuning and LoRA): `train.fsdp: true`, or `accelerate launch --use_fsdp` (ACCELERATE_USE_FSDP), on
  GPUs or CPU (gloo) alike, e.g. `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --use_fsdp
  -m visalign.cli train ...` or `torchrun ... train RECIPE train.fsdp=true`. The trainer shards the trained network
  (and a full fine-tune's frozen reference copy) itself with torch's FSDP2 (`fully_shard`), one code path for both
  devices (accelerate's plugin, GPU-only, stays out): every block of the network's block lists (nn.ModuleLists:
  transformer_blocks, single_transformer_blocks, down_blocks / up_blocks, the built-ins' blocks and layers) is a
  unit, then the root; each process keeps 1/N of every parameter, gradient and Adam moment, and gathers a unit's
  parameters around each of its forwards (resharding after every forward). The backward reduce-scatters the
  gradients (reduce_gradients() then does nothing); clipping uses the global norm of the sharded gradients. Every
  process runs every forward: evaluation generates each process's part of the images (the main process scores
  them), gradient diagnostics pad a process with fewer samples with zero-weight passes, and checkpoints are gathered
  whole by all and written by the main process, in the same files as without FSDP (an FSDP run resumes unsharded
  and back). Mixed precision is the same autocast on fp32 master weights (FSDP's MixedPrecisionPolicy is not used:
  parameters are gathered in fp32); fp16 is refused under FSDP (its grad scaler would judge each shard alone). Of
  accelerate's --fsdp_* options, the per-block wrapping above replaces the auto-wrap policy and --fsdp_version (always
  FSDP2); what the trainer cannot honour is refused: offloading, a strategy other than FULL_SHARD / reshard after
  forward, FSDP's activation checkpointing (use train.gradient_checkpointing); the trainer refuses adamw8bit.
  An adapter that calls network methods besides forward names them (`network_methods`, e.g. the built-ins'
  encode_prompts): FSDP gathers around them too. One process: FSDP is a no-op.
DeepSpeed: refused in one line.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist

PRECISIONS = ("no", "bf16", "fp16")  # train.mixed_precision / accelerate launch --mixed_precision
BUCKET = 1 << 24  # gradient elements per all-reduce (64 MiB of fp32): bounded extra memory, few calls


def resolve_mixed_precision(recipe: str, launcher: str | None, device_type: str) -> str:
    """The run's mixed precision from the recipe's train.mixed_precision ("" = as launched) and the launcher's
    ACCELERATE_MIXED_PRECISION ("no" when unset). Refuses, in one line, a contradiction or what the device lacks."""
    launched = (launcher or "no").lower()
    if launched not in PRECISIONS:
        raise ValueError(f"accelerate launch --mixed_precision {launched} is not supported; accepted: {', '.join(PRECISIONS)}")
    if recipe and launched != "no" and recipe != launched:
        raise ValueError(f"train.mixed_precision={recipe} contradicts accelerate launch --mixed_precision {launched} "
                         f"(ACCELERATE_MIXED_PRECISION); set one of them, or make them agree")
    chosen = recipe or launched
    if chosen == "fp16" and device_type == "cpu":
        raise ValueError("mixed precision fp16 needs a GPU (accelerate runs no fp16 autocast or grad scaler on CPU); "
                         "on CPU use bf16 or no")
    return chosen


def fsdp_requested(recipe: bool) -> bool:
    """train.fsdp, or the launcher's --use_fsdp (ACCELERATE_USE_FSDP)."""
    return recipe or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def check_engine(fsdp: bool, precision: str) -> None:
    """Refuse, in one line, what the trainer cannot run (asked by the recipe or by the launcher): DeepSpeed; under
    FSDP, fp16 and the accelerate --fsdp_* settings that the trainer's sharding does not honour."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise ValueError("DeepSpeed is not supported by the trainer; launch with DDP (accelerate launch --multi_gpu) "
                         "or FSDP (--use_fsdp, or train.fsdp=true)")
    if not fsdp:
        return
    env = lambda name, default="": os.environ.get(name, default).lower()
    if precision == "fp16":
        raise ValueError("FSDP with mixed precision fp16 is not supported (the grad scaler would judge each shard "
                         "alone); use bf16 or no")
    if env("FSDP_OFFLOAD_PARAMS") == "true":
        raise ValueError("accelerate launch --fsdp_offload_params true is not supported by the trainer's FSDP; "
                         "accepted: false")
    if (env("FSDP_SHARDING_STRATEGY", "full_shard") not in ("full_shard", "1")
            or env("FSDP_RESHARD_AFTER_FORWARD", "true") not in ("true", "full_shard", "1")):
        raise ValueError("the trainer's FSDP shards fully and reshards after every forward; accepted: "
                         "--fsdp_sharding_strategy FULL_SHARD and --fsdp_reshard_after_forward true")
    if env("FSDP_ACTIVATION_CHECKPOINTING") == "true":
        raise ValueError("accelerate launch --fsdp_activation_checkpointing is not supported; set "
                         "train.gradient_checkpointing=true (the backbone's own checkpointing) instead")


def network_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """FSDP's units below the root: the modules with parameters in the network's nn.ModuleLists (transformer_blocks,
    single_transformer_blocks, down_blocks / up_blocks, the built-ins' blocks and layers), outermost lists only
    (a list inside such a block stays in its unit)."""
    blocks = []
    for child in module.children():
        if isinstance(child, torch.nn.ModuleList):
            blocks += [b for b in child if b is not None and next(b.parameters(), None) is not None]
        else:
            blocks += network_blocks(child)
    return blocks


@contextmanager
def _without_env(name: str):
    """The block runs with environment variable `name` unset (restored after)."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def _buckets(tensors: list[torch.Tensor], size: int):
    """Consecutive runs of tensors of one dtype and device, each of at most `size` elements (or one tensor)."""
    bucket, n = [], 0
    for t in tensors:
        if bucket and (n + t.numel() > size or (t.dtype, t.device) != (bucket[0].dtype, bucket[0].device)):
            yield bucket
            bucket, n = [], 0
        bucket.append(t)
        n += t.numel()
    if bucket:
        yield bucket


class Distributed:
    """One process's view of the run: rank, device, the collectives the trainer needs, and the Accelerator
    (self.accelerator) that configure() makes with the run's settings."""

    def __init__(self, cpu: bool | None = None):
        from accelerate import PartialState

        if cpu is None:
            cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
        self.cpu = cpu
        self.state = PartialState(cpu=cpu)
        self.rank = self.state.process_index
        self.world_size = self.state.num_processes
        self.device = self.state.device
        self.accelerator = None
        self.fsdp = False  # configure(): whether the trained network is sharded (FSDP over several processes)
        self._mesh = None

    def configure(self, mixed_precision: str = "", fsdp: bool = False) -> None:
        """Make this run's Accelerator (device placement, mixed precision, grad scaler) and decide FSDP (the recipe's
        train.fsdp or the launcher's). One line for what is refused: DeepSpeed, an unsupported or contradicting
        mixed precision, FSDP settings the trainer does not honour."""
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        fsdp = fsdp_requested(fsdp)
        precision = resolve_mixed_precision(mixed_precision, os.environ.get("ACCELERATE_MIXED_PRECISION"),
                                            self.device.type)
        check_engine(fsdp, precision)
        self.fsdp = fsdp and self.active  # one process has nothing to shard over
        AcceleratorState._reset_state()  # a run owns the engine: an earlier run's (same process) may differ in precision
        with _without_env("ACCELERATE_USE_FSDP"):  # the trainer shards itself (shard_network); accelerate's plugin stays out
            self.accelerator = Accelerator(cpu=self.cpu, mixed_precision=precision)
        self.device = self.accelerator.device

    @property
    def mixed_precision(self) -> str:
        return self.accelerator.mixed_precision if self.accelerator else "no"

    @property
    def scales_loss(self) -> bool:
        """fp16: the loss is scaled, and an overflowing step is the scaler's to skip, not an error."""
        return self.accelerator is not None and self.accelerator.scaler is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    # ------------------------------------------------------------------------------ compute (the Accelerator)

    def autocast(self):
        """The network's forwards run in this (the run's mixed precision; a no-op for "no")."""
        return self.accelerator.autocast() if self.accelerator else nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), scaled under fp16."""
        if self.accelerator:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def clip_grad_norm_(self, optimizer, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        """The global gradient norm before clipping (a plain tensor, the same on every process: FSDP's sharded
        gradients are normed together); fp16: the optimizer's gradients are unscaled first."""
        if self.scales_loss:
            self.accelerator.scaler.unscale_(optimizer)
        return self.full_tensor(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def step(self, optimizer) -> bool:
        """optimizer.step(), through accelerate's grad scaler under fp16 -> whether it stepped (the scaler skips
        a step with inf/NaN gradients and lowers its scale). The optimizer itself stays unwrapped: its hooks and
        state_dict are the plain optimizer's."""
        if not self.scales_loss:
            optimizer.step()
            return True
        scaler = self.accelerator.scaler
        before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        return scaler.get_scale() >= before

    def reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """grad <- mean over processes, in place: once per optimizer step, after all its backwards. A parameter
        with a gradient on some process gets zeros where it has none; one without a gradient anywhere keeps
        None (the optimizer skips it, as one process would). FSDP: nothing to do, the backward reduce-scattered."""
        if not self.active or self.fsdp:
            return
        from accelerate.utils import reduce

        has = torch.tensor([float(p.grad is not None) for p in params], device=self.device)  # [P]
        has = reduce(has, reduction="max")
        for p, h in zip(params, has.tolist()):
            if h and p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets([p.grad for p in params if p.grad is not None], BUCKET):
            flat = reduce(torch.cat([g.reshape(-1) for g in bucket]), reduction="mean")  # [n]
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def summed_gradient(self, params: list[torch.nn.Parameter]) -> torch.Tensor:
        """The gradients summed over processes, flat [P], whole on every process (a missing one counts as zeros).
        FSDP's backward already averaged them; otherwise each process holds its own."""
        flat = torch.cat([self.full_tensor(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                          for p in params])
        return (flat if self.fsdp else self.all_reduce_mean(flat)) * self.world_size

    def lockstep(self, n: int) -> int:
        """FSDP: the most network passes any process has to run, so every process runs as many (each forward
        gathers parameters with the others); n itself without FSDP."""
        if not self.fsdp:
            return n
        from accelerate.utils import reduce

        return int(reduce(torch.tensor(float(n), device=self.device), reduction="max").item())

    # ---------------------------------------------------------------------------------------------- FSDP

    def shard_network(self, module: torch.nn.Module, params: list[torch.nn.Parameter],
                      methods: tuple[str, ...] = ()) -> list[torch.nn.Parameter]:
        """FSDP: shard `module` in place with FSDP2, each of network_blocks() a unit, then the root, resharding
        after every forward (so outside forwards the Parameters are the shards the optimizer, EMA and checkpoints
        see). `methods`: the module's methods besides forward that callers run (e.g. a built-in model's
        encode_prompts): FSDP gathers the parameters around them too. -> `params` as the module's new (sharded)
        Parameters, in the same order. Without FSDP: nothing changes, -> params."""
        if not self.fsdp:
            return params
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        if self._mesh is None:
            self._mesh = init_device_mesh(self.device.type, (self.world_size,))
        names = {id(p): n for n, p in module.named_parameters()}
        order = [names[id(p)] for p in params]
        for block in network_blocks(module):
            fully_shard(block, mesh=self._mesh, reshard_after_forward=True)
        fully_shard(module, mesh=self._mesh, reshard_after_forward=True)
        for name in methods:
            register_fsdp_forward_method(module, name)
        now = dict(module.named_parameters())
        return [now[n] for n in order]

    def held_elements(self, params: list[torch.nn.Parameter]) -> tuple[int, int]:
        """(elements of `params` this process holds, elements of the whole parameters): about 1/N under FSDP."""
        from torch.distributed.tensor import DTensor

        held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
        return held, sum(p.numel() for p in params)

    def full_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """t whole: an FSDP shard gathered (a collective: every process calls, in the same order), else t."""
        from torch.distributed.tensor import DTensor

        return t.full_tensor() if isinstance(t, DTensor) else t

    def shard_like(self, full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A whole tensor (the same on every process) as this process's part of `like`'s sharding; `full` itself
        when `like` is not sharded. No communication."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        if not isinstance(like, DTensor):
            return full
        return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)

    def full_state(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{name: tensor} whole, on the CPU, on the main process; {} on the others (what the main process writes).
        A collective under FSDP: every process calls."""
        out = {}
        for name, t in tensors.items():
            whole = self.full_tensor(t.detach())
            if self.is_main:
                out[name] = whole.cpu()
        return out

    def local_state(self, full: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """full_state()'s inverse on every process: each whole tensor as this process's part of the tensor of
        that name in `like` (a state dict of the sharded module); names `like` lacks pass through."""
        return {k: self.shard_like(v, like[k]) if k in like else v for k, v in full.items()}

    def full_optimizer_state(self, optimizer) -> dict:
        """optimizer.state_dict() with FSDP's sharded moments whole (the main process's; {} state elsewhere): the
        file a run without FSDP writes. A collective under FSDP: every process calls."""
        sd = optimizer.state_dict()
        if not self.fsdp:
            return sd
        state = {i: self.full_state(dict(sorted(sd["state"][i].items()))) for i in sorted(sd["state"])}
        return {"state": state if self.is_main else {}, "param_groups": sd["param_groups"]}

    def load_optimizer_state(self, optimizer, sd: dict) -> None:
        """optimizer.load_state_dict() of a whole state (full_optimizer_state's, or a run's without FSDP): FSDP
        keeps this process's part of each parameter-shaped tensor."""
        if self.fsdp:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            shard = lambda v, p: self.shard_like(v, p) if torch.is_tensor(v) and v.shape == p.shape else v
            sd = {**sd, "state": {i: {k: shard(v, params[int(i)]) for k, v in s.items()}
                                  for i, s in sd["state"].items()}}
        optimizer.load_state_dict(sd)

    # ------------------------------------------------------------------------------------ collectives

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of a global batch of n items (n must divide evenly)."""
        if n % self.world_size != 0:
            raise ValueError(f"a global batch of {n} does not split over {self.world_size} processes")
        per = n // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate equal-shaped tensors from every rank along dim 0, in rank order (on t's device)."""
        if not self.active:
            return t
        from accelerate.utils import gather

        return gather(t.contiguous().to(self.device)).to(t.device)

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of t (on t's device: NCCL reduces on the GPU, callers may hold CPU scalars)."""
        if not self.active:
            return t
        from accelerate.utils import reduce

        return reduce(t.to(self.device), reduction="mean").to(t.device)

    def barrier(self) -> None:
        if self.active:
            self.state.wait_for_everyone()

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. writes a file), the others after."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def shutdown(self) -> None:
        """End a multi-process run cleanly: gloo can abort in its destructor after all work is done, so
        sync, tear the group down, flush, and leave without running finalizers."""
        if not self.active:
            return
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

def make_trackers(report_to, run_dir, resume_iteration: int | None = None, start: bool = True) -> list:
    """The experiment trackers `train.report_to` names, as accelerate.tracking objects logging under run_dir
    (TensorBoard in RUN/tb, wandb's files in RUN/wandb). report_to: one name, a comma-separated string or a list;
    'none' for no tracker, 'all' for every installed one. Every process calls this so that a bad name stops all of
    them alike; start=False (the other processes) only checks the names and returns []. On resume,
    TensorBoard hides the events past the checkpoint, as metrics.jsonl drops its lines."""
    from pathlib import Path

    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    names = report_to.split(",") if isinstance(report_to, str) else list(report_to)
    names = list(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
    installed = [str(getattr(t, "value", t)) for t in get_available_trackers()]
    if "none" in names:
        if len(names) > 1:
            others = ", ".join(n for n in names if n != "none")
            raise ValueError(f"train.report_to: 'none' cannot be combined with {others}")
        return []
    if "all" in names:
        names = list(dict.fromkeys(installed + [n for n in names if n != "all"]))
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ValueError(f"train.report_to: unknown tracker '{name}'; accepted: none, all, "
                             f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))} (comma-separated for several)")
        if name not in installed:
            raise ValueError(f"train.report_to: tracker '{name}' is not installed (pip install {name}); "
                             f"installed: {', '.join(installed) or 'none'}")
    if not start:
        return []
    run_dir = Path(run_dir)
    trackers = []
    for name in names:
        cls, kwargs = LOGGER_TYPE_TO_CLASS[name], {}
        project = os.environ.get("WANDB_PROJECT", "visalign") if name == "wandb" else "visalign"
        if name == "tensorboard":  # logging_dir / run_name = RUN/tb, where TensorBoard users and the tests look
            project = "tb"
            if resume_iteration is not None:
                kwargs["purge_step"] = resume_iteration + 1
        elif name == "wandb":  # wandb.init(dir=RUN) keeps its files (offline runs included) in RUN/wandb
            kwargs = {"dir": str(run_dir), "name": run_dir.name}
        tracker = cls(project, str(run_dir), **kwargs) if cls.requires_logging_directory else cls(project, **kwargs)
        tracker.start()
        trackers.append(tracker)
    return trackers
