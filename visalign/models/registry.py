"""Named generators: `load_generator("builtin:shapes-flow")`, `load_generator("oracle?blur=0.6&noise=0.04")`.

A generator turns prompts and per-sample seeds into uint8 images [B, H, W, 3]; options after '?' are
passed to its factory as typed keyword arguments (a recipe's `model_options` are added to them: with_options).

`diffusers:<path-or-hub-id>` loads offline by default (a local folder or the Hugging Face cache);
`?local_files_only=false` lets diffusers download a hub id. A user's diffusers pipeline takes any prompt; the
other models are world models (is_world_model), drawing only their world's words, so their prompts are held to
its grammar: an adapter that has `parse_prompt` (a generator: `parse`) holds prompts to it.

The core registers the diffusers adapter only; plugins register the rest (visalign/plugins.py; the GenEval-S
testbed's models: visalign/testbed/models/registry.py), and may register a loader of saved model folders
(MODEL_FOLDERS), bundled diffusers pipelines (BUNDLED_PIPELINES) and where a bundled model's files are
(BUNDLED_FOLDERS)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import PositiveInt, check_options
from ..images import tensor_to_images
from ..protocols import adapter_problem
from ..registry import Registry, is_module_spec, split_spec
from ..plugins import load_plugins


def _model_factory(obj) -> str | None:
    """What MODELS holds: a function or class that builds an adapter (or a generator); not a built object."""
    import inspect

    if isinstance(obj, type) or inspect.isroutine(obj):  # a factory may carry a `family` (load_train_recipe reads it)
        return None
    if callable(obj) and not hasattr(obj, "family") and not hasattr(obj, "generate"):
        return None
    return f"is a {type(obj).__name__}, not a function or class that returns a model adapter"


MODELS = Registry("model", check=_model_factory)
# folder loaders registered by plugins: loader(path, **options) -> a model adapter, or None when the folder is not
# one it loads; load_model tries them in name order on a folder path that is not a registered name
MODEL_FOLDERS = Registry("model folder loader")
BUNDLED_PIPELINES: list[str] = []  # registered model names that load a diffusers pipeline folder (plugins add)
BUNDLED_FOLDERS: dict = {}  # registered model name -> the folder its bundled files are in (model cards)


def check_batch(prompts, seeds) -> None:
    """A generator's input: a list of prompt strings and one non-negative integer seed each (zip() would
    silently draw fewer images; a prompt string would be read letter by letter)."""
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"generate: prompts must be a list of strings, got {type(prompts).__name__} {prompts!r:.80}")
    if not isinstance(seeds, (list, tuple, np.ndarray)) or len(seeds) != len(prompts):
        got = f"{len(seeds)} seeds" if isinstance(seeds, (list, tuple, np.ndarray)) else type(seeds).__name__
        raise ValueError(f"generate: {len(prompts)} prompts and {got}; accepted: one seed per prompt")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0]
    if bad:
        raise ValueError(f"generate: seeds must be integers >= 0, got {bad[:3]}")


class PolicyGenerator:
    """Any model adapter sampled by its family's policy with the deterministic sampler and CFG, or with
    another of the family's samplers picked by SAMPLER_OPTIONS (kind=ddim&eta=1: the stochastic DDIM a DDPO
    run trains; its noise comes from each sample's seed, so such an evaluation still repeats exactly)."""

    def __init__(self, adapter, steps: PositiveInt | None = None, guidance: float | None = None,
                 batch_size: PositiveInt = 128, validate: bool = True, **sampler):
        import dataclasses

        from ..policies import make_policy

        self.adapter = adapter
        self.policy = make_policy(adapter)
        self.sampling = self.policy.eval_sampling(steps, guidance)
        fields = {f.name for f in dataclasses.fields(self.sampling)}
        bad = sorted(set(sampler) - (fields & set(SAMPLER_OPTIONS)))
        if bad:
            takes = ["steps", "guidance", "batch_size"] + [o for o in SAMPLER_OPTIONS if o in fields]
            raise ValueError(f"sampler options {bad} do not apply to a {type(self.policy).__name__}; its sampler "
                             f"takes: {', '.join(takes)}")
        sampler = check_options(type(self.sampling), sampler, f"{type(self.policy).__name__} sampler")  # typed
        self.sampling = dataclasses.replace(self.sampling, **sampler)  # then the Sampling checks the values
        self.batch_size = batch_size
        self.validate = validate  # prompts must parse in the model's world task (a clear error for a typo)
        self.parse = getattr(adapter, "parse_prompt", None)  # the grammar the model reads, where it has one

    def generate(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        check_batch(prompts, seeds)
        for p in prompts if self.validate and self.parse is not None else []:
            if p:
                self.parse(p)
        out = []
        for i in range(0, len(prompts), self.batch_size):
            traj = self.policy.sample(prompts[i : i + self.batch_size], seeds[i : i + self.batch_size], self.sampling)
            out.append(tensor_to_images(traj.images))
        return np.concatenate(out)


DIFFUSERS_PREFIX = "diffusers:"


def is_diffusers_spec(spec: str) -> bool:
    """Whether a model spec loads a diffusers pipeline: a user's `diffusers:` one or a bundled one."""
    load_plugins()  # they add their bundled pipelines
    name = spec.split("?", 1)[0]
    return name.startswith(DIFFUSERS_PREFIX) or name in BUNDLED_PIPELINES


def is_world_model(spec: str) -> bool:
    """Whether a model draws only a built-in world's words, so prompts are held to its grammar (a clear error for
    a typo): every model but a user's `diffusers:` pipeline, which takes any prompt. The bundled pipelines count
    as world models: their tokenizer knows only the world's words and would split any other into meaningless
    pieces, silently."""
    name = spec.split("?", 1)[0]
    return not (name.startswith(DIFFUSERS_PREFIX) or is_module_spec(name))  # a user's own model: any prompt too


def with_options(spec: str, options: dict) -> str:
    """A model spec with a recipe's `model_options` added after '?' (the spec's own text kept as written). A key
    given both ways with different values is refused."""
    from urllib.parse import urlencode

    if not isinstance(options, dict):
        raise ValueError(  # noqa: TRY004 - a recipe's mistake: the one-line errors the CLI prints are ValueErrors
            f"model_options must be a mapping of model options, e.g. {{local_files_only: false}}; got {options!r}")
    _, own = split_spec(spec)
    clash = sorted(k for k in options if k in own and own[k] != options[k])
    if clash:
        raise ValueError(f"model option(s) {clash} given twice with different values, in model '{spec}' and in "
                         f"model_options {options}; give each once")
    new = {k: str(v).lower() if isinstance(v, bool) else v for k, v in options.items() if k not in own}
    return spec + ("&" if "?" in spec else "?") + urlencode(new) if new else spec


@MODELS.register(DIFFUSERS_PREFIX + "<path-or-hub-id>", "a diffusers SD1.5/SDXL/SD3/FLUX or Wan/LTX video pipeline, "
                 "local dir or hub id; offline by default: a hub id must be in the local cache unless "
                 "local_files_only=false, which lets diffusers download it (options: dtype, resolution, flux_guidance, "
                 "max_sequence_length, local_files_only; video: num_frames, height, width, frame_rate)")
def _diffusers(path: str, **opts):
    from .diffusers_adapter import load_diffusers

    return load_diffusers(path, **opts)


# a factory's policy family is its `family` attribute (the plugins' built-ins set one; a user's `module:factory` may
# too): load_train_recipe reads it to check a recipe's sampling keys before anything loads
PIPELINE_FAMILIES = {"StableDiffusionPipeline": "diffusion", "StableDiffusionXLPipeline": "diffusion",
                     "StableDiffusion3Pipeline": "flow", "FluxPipeline": "flow", "WanPipeline": "flow",
                     "LTXPipeline": "flow"}  # model_index.json's _class_name


def _pipeline_family(source: str) -> str | None:
    """A diffusers pipeline's family from its model_index.json: a local folder's, or a hub id's in the local cache."""
    import json

    index = Path(source).expanduser() / "model_index.json"
    if not index.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "model_index.json")
        except Exception:  # noqa: BLE001 - not a repo id, no cache: the family is simply not known yet
            return None
        if not isinstance(cached, str):
            return None
        index = Path(cached)
    try:
        return PIPELINE_FAMILIES.get(json.loads(index.read_text()).get("_class_name"))
    except (OSError, ValueError, AttributeError):
        return None


def model_family(spec: str) -> str | None:
    """The policy family of a model spec without loading its weights: a factory's declared `family` (the built-ins,
    and a `module:factory` that sets one), a diffusers pipeline's model_index.json (local, or in the hub cache). None
    when that cannot be known cheaply (a hub id not in the cache, a saved model folder, a factory declaring none, the
    oracle, which is no policy)."""
    name, _ = split_spec(spec)
    if name.startswith(DIFFUSERS_PREFIX):
        return _pipeline_family(name[len(DIFFUSERS_PREFIX):])
    if name in MODELS or is_module_spec(name):
        family = getattr(MODELS.get(name), "family", None)
        return family if isinstance(family, str) else None
    if Path(name).is_dir():  # a pipeline folder saved by diffusers; other saved models are checked when they load
        return _pipeline_family(name)
    return None


def check_model_options(spec: str) -> None:
    """A model spec's options against its factory's signature (typed, unknown names refused), without building it:
    a registered name or a `module:factory`; a folder's and a diffusers pipeline's options are checked when loaded."""
    name, opts = split_spec(spec)
    if name.startswith(DIFFUSERS_PREFIX) or not (name in MODELS or is_module_spec(name)):
        return
    check_options(MODELS.get(name), opts, f"model '{name}'")


def load_model(spec: str):
    """'name' or 'name?key=value&...' -> what the name's factory builds (a model adapter, or a generator
    for the oracle). A directory path loads a built-in model saved with save_pretrained."""
    name, opts = split_spec(spec)
    if not name.strip():  # Path("") is the current folder: never load it as a model by accident
        raise ValueError(f"model spec '{spec}' names no model; accepted: a registered name (visalign list), a "
                         f"saved model folder, or diffusers:<path-or-hub-id>")
    if name.startswith(DIFFUSERS_PREFIX):  # a prefix: everything after it is the path or hub id
        opts["path"] = name[len(DIFFUSERS_PREFIX):]
        name = DIFFUSERS_PREFIX + "<path-or-hub-id>"
    elif name not in MODELS and Path(name).is_dir():
        from ..checkpoint import run_of_folder

        run = run_of_folder(name)
        if run is not None:  # a run holds training state, not a model folder
            raise ValueError(f"model '{name}' is a visalign run or checkpoint folder, not a model folder; export it "
                             f"first: `visalign export {run} --format merged --out DIR`, then --model DIR")
        for loader in MODEL_FOLDERS.names():
            adapter = MODEL_FOLDERS.get(loader)(name, **opts)
            if adapter is not None:
                return adapter
        raise ValueError(f"model folder '{name}' is not one a registered loader reads; accepted: a registered name "
                         f"(visalign list), a saved model folder, or diffusers:<path-or-hub-id>")
    factory = MODELS.get(name)
    opts = check_options(factory, opts, f"model '{name}'")  # typed from its signature: ?steps=abc is one line
    try:
        model = factory(**opts)
    except TypeError as e:
        raise ValueError(f"model '{name}' does not take options {sorted(opts)}: {e}") from None
    problem = None if hasattr(model, "generate") else adapter_problem(model)
    if problem:  # a `module:factory`'s product is only known once built
        raise ValueError(f"model '{name}' built a {type(model).__name__}, which {problem}")
    return model


SAMPLER_OPTIONS = ("kind", "eta", "noise_level", "shift")  # fields of a family's Sampling, where it has them
GENERATOR_OPTIONS = ("steps", "guidance", "batch_size", *SAMPLER_OPTIONS)


def load_generator(spec: str, validate: bool = True):
    """A model spec -> generate(prompts, seeds) -> uint8 [B, H, W, 3]. Sampler options (steps, guidance,
    batch_size; kind, eta, noise_level, shift where the family's sampler has them) may follow the name:
    'builtin:shapes-flow?steps=10&guidance=4', 'builtin:shapes-ddpm?kind=ddim&eta=1&steps=10'. validate: hold
    prompts to the model's world grammar (PolicyGenerator)."""
    name, opts = split_spec(spec)
    gen_opts = {k: opts.pop(k) for k in GENERATOR_OPTIONS if k in opts}
    model_spec = name + ("?" + "&".join(f"{k}={v}" for k, v in opts.items()) if opts else "")
    obj = load_model(model_spec)
    if hasattr(obj, "generate"):
        if gen_opts:
            raise ValueError(f"model '{name}' takes no sampler options {sorted(gen_opts)}")
        return obj
    gen_opts = check_options(PolicyGenerator, gen_opts, f"model '{name}'")  # ?steps=0, ?guidance=nan: refused
    return PolicyGenerator(obj, validate=validate, **gen_opts)
