"""The model card (README.md) `visalign export` writes beside the weights, as a Hugging Face model repo's card:
YAML front matter (base_model, library_name, tags, license where known) and a body with the base model, the
recipe, the held-out scores before and after training and how to load the export.

Every number on the card is read from the run's own files (recipe.json, metrics.jsonl, the checkpoint's
iteration); a run without an evaluation gets a card that says so instead of scores.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..registry import split_spec

CARD_NAME = "README.md"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # the name diffusers' save_lora_weights gives the file
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Base:
    """Where the run's base model comes from. hub_id: a Hub repo id (the only kind of value the Hub accepts as
    `base_model`); path: a folder to load it from (a user's folder, or the bundled one inside visalign);
    bundled: the visalign model name when it ships with visalign; license: known from its card or package."""

    spec: str
    hub_id: str | None
    path: str | None
    bundled: str | None
    license: str | None


def describe_base(spec: str) -> Base:
    """The recipe's `model` spec -> Base (no network: a hub license is read only from the local HF cache)."""
    from ..plugins import load_plugins
    from .registry import BUNDLED_FOLDERS, DIFFUSERS_PREFIX

    load_plugins()  # they name their bundled models' folders
    name, opts = split_spec(spec)
    if name.startswith(DIFFUSERS_PREFIX):
        where = name[len(DIFFUSERS_PREFIX):]
        if not Path(where).exists() and HUB_ID.match(where):
            return Base(spec, where, None, None, _hub_license(where))
        return Base(spec, None, where, None, _folder_license(Path(where)))
    if name in BUNDLED_FOLDERS:
        if opts.get("path"):  # a bundled model's architecture with the user's own weights
            return Base(spec, None, str(opts["path"]), None, _folder_license(Path(str(opts["path"]))))
        return Base(spec, None, str(BUNDLED_FOLDERS[name]), name, _package_license())
    return Base(spec, None, name, None, _folder_license(Path(name)))  # a folder saved by save_pretrained


def _package_license() -> str | None:
    """The bundled weights ship inside the visalign package, under its license (pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        meta = metadata("visalign")
    except PackageNotFoundError:
        return None
    text = meta.get("License-Expression") or meta.get("License")
    return text.lower() if text and text.strip() and "\n" not in text else None


def _card_license(card_path: Path) -> str | None:
    """The `license:` of a model card's front matter, or None (no card, no such field, unreadable)."""
    from huggingface_hub import ModelCard

    try:
        value = ModelCard.load(card_path).data.license
    except Exception:  # noqa: BLE001 - a missing or malformed card only means the license is not known
        return None
    return value if isinstance(value, str) and value else None


def _folder_license(folder: Path) -> str | None:
    return _card_license(folder / CARD_NAME) if (folder / CARD_NAME).is_file() else None


def _hub_license(repo_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, CARD_NAME)  # offline: the cache only
    return _card_license(Path(cached)) if isinstance(cached, str) else None


# ------------------------------------------------------------------------------------------ the front matter


VIDEO_PIPELINES = ("WanPipeline", "LTXPipeline")  # their __call__ returns .frames, not .images


def front_matter(recipe: dict, base: Base, fmt: str, pipeline_class: str | None = None) -> str:
    """The card's YAML header, written by huggingface_hub's ModelCardData (the Hub's own field layout)."""
    from huggingface_hub import ModelCardData

    is_lora = fmt == "diffusers-lora"
    diffusers = is_lora or _is_pipeline(base)
    task = "text-to-video" if pipeline_class in VIDEO_PIPELINES else "text-to-image"
    tags = ["visalign", "reinforcement-learning", str(recipe.get("algorithm", "")), task]
    if is_lora:
        tags.insert(3, "lora")
    data = ModelCardData(base_model=base.hub_id, library_name="diffusers" if diffusers else None,
                         license=base.license, pipeline_tag=task if diffusers else None,
                         tags=[t for t in tags if t])
    return f"---\n{data.to_yaml()}\n---"


def _is_pipeline(base: Base) -> bool:
    from .registry import is_diffusers_spec

    return is_diffusers_spec(base.spec)


# ------------------------------------------------------------------------------------------ the body


def card_text(run: Path, recipe: dict, spec: str, fmt: str, iteration: int, load_from: str, pipeline_class: str | None,
              lora: tuple[int, float, list[str], str] | None) -> str:
    """The whole README.md. spec: the model spec the run loaded (recipe `model` + `model_options`);
    iteration: the checkpoint exported; load_from: the Hub repo or folder the export
    will be loaded from; pipeline_class: the diffusers pipeline class, None for a built-in model;
    lora: (rank, alpha the run trained with, peft target_modules, the weight keys' prefix: unet or
    transformer) of a diffusers-lora export."""
    base = describe_base(spec)
    title = recipe.get("name") or run.name
    what = "LoRA" if fmt == "diffusers-lora" else "model"
    parts = [front_matter(recipe, base, fmt, pipeline_class),
             f"# {title}: a {recipe.get('algorithm')} {what} fine-tuned with visalign",
             (recipe.get("description") or "").strip(),
             f"This folder is `visalign export {run.name} --format {fmt}` of the checkpoint at iteration {iteration}.",
             _base_section(base, pipeline_class, fmt), _recipe_section(recipe, iteration),
             _eval_section(run, recipe, iteration),
             _load_section(base, fmt, load_from, pipeline_class, lora, _example_prompt(run))]
    return "\n\n".join(p for p in parts if p) + "\n"


def _example_prompt(run: Path) -> str:
    """A held-out prompt of the run's own prompt set (the report grid's first, samples/prompts.json) for the
    loading snippet; a GenEval-S prompt when the run never evaluated."""
    try:
        return str(json.loads((run / "samples" / "prompts.json").read_text())[0])
    except (OSError, ValueError, IndexError, KeyError):
        return "a red circle"


def _base_section(base: Base, pipeline_class: str | None, fmt: str) -> str:
    kind = f"a diffusers `{pipeline_class}`" if pipeline_class else "a visalign built-in model"
    if base.hub_id:
        where = f"The Hugging Face Hub model [`{base.hub_id}`](https://huggingface.co/{base.hub_id})"
    elif base.bundled:
        where = (f"`{base.bundled}`, which ships with visalign (the folder `visalign/weights/{Path(base.path).name}` "
                 f"inside the package)")
    else:
        # a LoRA is loaded on top of its base; a merged export is the whole model
        needed = " (not on the Hub: whoever loads this LoRA needs that folder)" if fmt == "diffusers-lora" else ""
        where = f"The local folder `{base.path}`{needed}"
    lic = f"License: `{base.license}` (the base model's)." if base.license else "License: not known."
    return f"## Base model\n\n{where}, {kind} (recipe `model: {base.spec}`). {lic}"


def _opts(options: dict | None) -> str:
    return f" `{json.dumps(options)}`" if options else ""


def _recipe_section(recipe: dict, iteration: int) -> str:
    train = recipe.get("train", {})
    rows = [("algorithm", f"`{recipe.get('algorithm')}`{_opts(recipe.get('algorithm_options'))}"),
            ("reward", f"`{recipe.get('reward')}`{_opts(recipe.get('reward_options'))}"),
            ("prompt set", f"`{recipe.get('prompts')}`" + (f", data `{recipe['data']}`" if recipe.get("data") else "")),
            ("rollout sampler", f"`{json.dumps(recipe.get('sampling', {}))}`"),
            ("fine-tuning", _finetune_text(train)),
            ("learning rate", f"{train.get('lr')} ({train.get('lr_schedule', 'constant')})"),
            ("iterations", f"{iteration} trained (the recipe allows {train.get('iterations')})"),
            ("batch", f"{train.get('batch_size')} images per iteration, groups of {train.get('group_size')}"),
            ("seed", f"{train.get('seed')}")]
    if train.get("ema_decay"):
        rows.append(("EMA", f"decay {train['ema_decay']}: the exported weights are the EMA, the ones evaluated"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"## Training recipe\n\n| setting | value |\n|---|---|\n{table}\n\nThe full recipe is `recipe.json` " \
           f"in the run folder (`visalign train` reads it back)."


def _finetune_text(train: dict) -> str:
    if train.get("finetune", "lora") != "lora":
        return f"{train.get('finetune')} (every weight of the network)"
    targets = ", ".join(f"`{t}`" for t in train.get("lora_targets", []))
    return f"LoRA, rank {train.get('lora_rank')}, alpha {train.get('lora_alpha')}, on {targets}"


# ------------------------------------------------------------------------------------------ the scores


def _eval_records(run: Path, iteration: int) -> tuple[dict | None, dict | None]:
    """(before, after): the first evaluation and the last one at or before the exported iteration (a record
    written after the checkpoint scored weights this export does not hold). Either may be None."""
    from ..metrics import read_metrics

    evals = [r for r in read_metrics(run) if "eval_overall" in r]
    done = [r for r in evals if r["iteration"] <= iteration]
    before = evals[0] if evals else None
    after = done[-1] if done and done[-1] is not before else None
    return before, after


def _labels(recipe: dict, record: dict) -> list[tuple[str, str]]:
    """(metrics.jsonl key, what it measures) of the scores a record holds, in the card's order."""
    reward = f"{recipe.get('reward')}{_opts(recipe.get('reward_options'))}"
    geneval = "eval_exact" in record
    rows = [("eval_overall", "GenEval-S under GenEval's rules, mean of the categories" if geneval
             else f"reward {reward}, mean of the categories")]
    if geneval:
        rows += [("eval_exact", "GenEval-S exact reading: nothing but the objects asked for"),
                 ("eval_extra", "extra objects per image (lower is better)")]
    rows.append(("eval_reward", f"training reward {reward}"))
    rows.append(("eval_diversity", "diversity: pixel distance between images of one prompt"))
    return rows


def _eval_section(run: Path, recipe: dict, iteration: int) -> str:
    before, after = _eval_records(run, iteration)
    head = "## Held-out evaluation\n\n"
    if before is None:
        return head + "This run logged no held-out evaluation (its metrics.jsonl has no `eval_overall` record), " \
                      "so this card reports no scores."
    train = recipe.get("train", {})
    n = int(train.get("eval_per_category", 0)) * len(before.get("eval_categories", {}))
    ev = recipe.get("eval", {}) or {}
    default = "the model's default"
    how = (f"{n} held-out prompts ({train.get('eval_per_category')} per category, evaluation seed "
           f"{train.get('eval_seed', 0)}), drawn with the deterministic sampler (steps: {ev.get('steps') or default}; "
           f"guidance: {ev.get('guidance') or default}); the numbers are the run's metrics.jsonl records.")
    recs = [before] + ([after] if after else [])
    text = head + how + "\n\n" + _scores_table(recipe, recs) + "\n\n" + _category_table(recs)
    if after is None:
        text += "\n\nThe run was evaluated only before training: there is no score of the exported weights."
    elif after["iteration"] != iteration:
        text += (f"\n\nThe last evaluation is at iteration {after['iteration']}; the exported checkpoint "
                 f"(iteration {iteration}) was not evaluated.")
    if after and after.get("eval_hacking"):
        text += f"\n\n**Warning** from the run's reward-hacking monitor: {after['eval_hacking']}"
    return text


def _scores_table(recipe: dict, recs: list[dict]) -> str:
    """Each overall score of the evaluation records [before] or [before, after], with the change."""
    cols = [f"before (iteration {recs[0]['iteration']})"]
    if len(recs) == 2:
        cols += [f"after (iteration {recs[1]['iteration']})", "change"]
    rows = [f"| score | {' | '.join(cols)} |", "|---" * (len(cols) + 1) + "|"]
    for key, label in _labels(recipe, recs[0]):
        if all(key in r for r in recs) and not _duplicate(key, recs):
            rows.append(_row(f"{label} (`{key}`)", [r[key] for r in recs]))
    for spec in recs[0].get("eval_judges", {}):
        if all(spec in r.get("eval_judges", {}) for r in recs):
            rows.append(_row(f"judge {spec} (`eval_judges.{spec}`)", [r["eval_judges"][spec] for r in recs]))
    return "\n".join(rows)


def _duplicate(key: str, recs: list[dict]) -> bool:
    """The training reward's row repeats the headline score when the run trained on that very score."""
    return key == "eval_reward" and any(
        all(k in r and abs(r[k] - r["eval_reward"]) < 1e-6 for r in recs) for k in ("eval_overall", "eval_exact"))


def _row(label: str, values: list[float]) -> str:
    cells = [f"{v:.3f}" for v in values] + ([f"{values[1] - values[0]:+.3f}"] if len(values) == 2 else [])
    return f"| {label} | {' | '.join(cells)} |"


def _category_table(recs: list[dict]) -> str:
    """Per category: each reading before (and after)."""
    names = {"eval_categories": "score", "eval_exact_categories": "exact", "eval_extra_categories": "extra objects"}
    keys = [k for k in names if all(k in r for r in recs)]
    when = ["before"] + (["after"] if len(recs) == 2 else [])
    head = [f"{names[k]} {w}" for k in keys for w in when]
    rows = [f"| category | {' | '.join(head)} |", "|---" * (len(head) + 1) + "|"]
    for c in recs[0]["eval_categories"]:
        rows.append(f"| {c} | " + " | ".join(f"{r[k].get(c, float('nan')):.3f}" for k in keys for r in recs) + " |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------ loading it


def _base_lines(base: Base) -> list[str]:
    """Python lines that set `base` to the base model's Hub id or folder."""
    if base.hub_id:
        return ["", f"base = {json.dumps(base.hub_id)}"]
    if base.bundled:
        return ["from visalign.testbed.models.registry import WEIGHTS_DIR  # visalign's bundled weights", "",
                f"base = str(WEIGHTS_DIR / {json.dumps(Path(base.path).name)})"]
    return ["", f"base = {json.dumps(base.path)}"]


def _sample_line(prompt: str, folder: str | None, pipeline_class: str | None = None) -> str:
    """The call that makes an image (a video pipeline: a video, its frames), with the folder's sampling.json written
    in (the steps and guidance the bundled pipelines are meant to be sampled with) where it has one."""
    from .pipeline_files import read_sampling

    kwargs = read_sampling(Path(folder)) if folder and Path(folder).is_dir() else {}
    args = "".join(f", {k}={json.dumps(v)}" for k, v in kwargs.items())
    out = "video = pipe({}).frames[0]" if pipeline_class in VIDEO_PIPELINES else "image = pipe({}).images[0]"
    return out.format(f"{json.dumps(prompt)}{args}") + ("  # its steps and guidance" if kwargs else "")


def _code(lines: list[str]) -> str:
    return "```python\n" + "\n".join(lines) + "\n```"


def _load_section(base: Base, fmt: str, load_from: str, pipeline_class: str | None,
                  lora: tuple[int, float, list[str], str] | None, prompt: str) -> str:
    head = "## How to load it\n\n"
    if fmt == "diffusers-lora":
        rank, alpha, targets, prefix = lora
        code = ["from diffusers import DiffusionPipeline", *_base_lines(base), "",
                f"pipe = DiffusionPipeline.from_pretrained(base)  # {pipeline_class}",
                f"pipe.load_lora_weights({json.dumps(load_from)})", _sample_line(prompt, base.path, pipeline_class)]
        note = (f"`{LORA_WEIGHTS}` holds the LoRA in diffusers' format (peft keys under `{prefix}.`); "
                f"`adapter_config.json` is peft's `LoraConfig` for it: r {rank}, target_modules "
                f"{', '.join(f'`{t}`' for t in targets)}. The run trained with lora_alpha {alpha:g} (scale "
                f"{alpha / rank:g}); that scale is folded into the `lora_B` weights, so the config says lora_alpha = "
                f"r = {rank} (scale 1), as diffusers loads a LoRA file without alpha entries.")
        return head + _code(code) + f"\n\n{note}"
    on_hub = bool(HUB_ID.match(load_from)) and not Path(load_from).exists()
    if pipeline_class:  # the merged pipeline keeps the base folder's sampling.json (export._save_pipeline)
        code = ["from diffusers import DiffusionPipeline", "",
                f"path = {json.dumps(load_from)}",
                f"pipe = DiffusionPipeline.from_pretrained(path)  # {pipeline_class}, fine-tuned weights merged in",
                _sample_line(prompt, base.path, pipeline_class)]
        return head + _code(code)
    folder = "DIR" if on_hub else load_from
    fetch = f"hf download {load_from} --local-dir DIR   # the model folder\n" if on_hub else ""
    code = (f"{fetch}visalign sample --model {folder} --prompt {json.dumps(prompt)} --out grid.png\n"
            f"visalign eval --model {folder} --per-category 50")
    py = (f"from visalign.models.registry import load_generator\n\nimages = load_generator({json.dumps(folder)})"
          f'.generate([{json.dumps(prompt)}], [0])  # uint8 [1, H, W, 3]')
    return (head + "A visalign built-in model folder (the fine-tuned weights merged in), which visalign loads "
            f"as a model name:\n\n```bash\n{code}\n```\n\n```python\n{py}\n```")


def write_card(out: Path, run: Path, recipe: dict, spec: str, fmt: str, iteration: int, load_from: str,
               pipeline_class: str | None, lora: tuple[int, float, list[str], str] | None = None) -> Path:
    """out/README.md (see card_text for the arguments). -> its path."""
    path = out / CARD_NAME
    path.write_text(card_text(run, recipe, spec, fmt, iteration, load_from, pipeline_class, lora))
    return path
