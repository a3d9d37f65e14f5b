"""Export a trained run for use outside visalign: `visalign export RUN --format diffusers-lora|merged --out DIR`.

  diffusers-lora  the run's LoRA in diffusers' LoRA format (pytorch_lora_weights.safetensors, peft keys
                  under `unet.` / `transformer.`, written with the pipeline class's save_lora_weights), so
                  plain diffusers `pipe.load_lora_weights(DIR)` loads it. The LoRA scale alpha / rank is folded into the B matrices, because a diffusers
                  LoRA file without alpha entries loads with alpha = rank (scale 1) in every loader.
                  Beside it, adapter_config.json: peft's LoraConfig for those weights (r, lora_alpha = r since
                  the scale is folded, target_modules), for peft users.
  merged          the whole model with the LoRA folded into its weights (or a full fine-tune's weights):
                  a diffusers pipeline directory (`from_pretrained(DIR)`), or for a built-in model a
                  ShapesModel directory (`load_model(DIR)`).

Both write a model card, README.md (models/model_card.py): base model, recipe, held-out scores before and
after from the run's metrics.jsonl, and how to load the export. `push_to_hub` uploads a finished export.

The model is rebuilt from the run's recipe.json (`model` spec, `train.finetune`, `train.lora_*`), LoRA is
injected exactly as the trainer does, and the latest checkpoint's weights are loaded (the EMA weights when the
run kept them, `train.ema_decay`: those its evaluations scored). Everything (weights, card, adapter config) is
written to a temp folder next to DIR and renamed at the end; an existing non-empty DIR is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

FORMATS = ("diffusers-lora", "merged")


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"output {out} already exists and is not an empty folder; choose another --out or remove it")


def _read_recipe(run: Path) -> dict:
    path = run / "recipe.json"
    if not run.is_dir():
        raise ValueError(f"cannot export {run}: no such run folder")
    if not path.is_file():
        raise ValueError(f"cannot export {run}: it has no recipe.json (not a run folder made by `visalign train`)")
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot export {run}: recipe.json is not valid JSON ({e})") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("train", {}), dict):
        raise ValueError(  # noqa: TRY004 - a damaged file, the user's to fix: the CLI's one-line errors are ValueErrors
            f"cannot export {run}: recipe.json holds no recipe (a mapping with model, train, ...), the file "
            f"`visalign train` writes; restore it")
    return recipe


def _load_weights(run: Path) -> dict:
    from ..checkpoint import ResumeError, ema_weights, load_checkpoint, rng_state, set_rng_state

    if not (run / "checkpoints" / "latest").is_file():
        raise ValueError(f"cannot export {run}: it has no checkpoint yet (checkpoints/latest is missing)")
    saved = rng_state()  # load_checkpoint restores the run's RNG states; exporting must not change ours
    try:
        weights, _, state = load_checkpoint(run)
    except ResumeError as e:
        raise ValueError(str(e).replace("cannot resume", "cannot export")) from None
    finally:
        set_rng_state(saved)
    return ema_weights(state["extra"]) or weights  # a run with train.ema_decay: the weights its evaluations scored


def _checkpoint_iteration(run: Path) -> int:
    """The iteration of the checkpoint _load_weights read (load_checkpoint's choice: find_checkpoint)."""
    from ..checkpoint import ResumeError, find_checkpoint

    try:
        ck = find_checkpoint(run)[0]
    except ResumeError as e:
        raise ValueError(str(e).replace("cannot resume", "cannot export")) from None
    return int(json.loads((ck / "state.json").read_text())["iteration"])


def _export_spec(spec: str) -> str:
    """The recipe's model spec, loaded in float32 for a diffusers model (a merge in bf16 would round)."""
    from ..registry import split_spec
    from .registry import is_diffusers_spec

    if not is_diffusers_spec(spec):
        return spec
    name, opts = split_spec(spec)
    opts["dtype"] = "float32"
    return name + "?" + "&".join(f"{k}={v}" for k, v in opts.items())


def export_run(run_dir: str | os.PathLike, fmt: str, out_dir: str | os.PathLike, hub_repo: str | None = None) -> Path:
    """Export the latest checkpoint of run `run_dir` as `fmt` (diffusers-lora | merged) into `out_dir`, with a
    model card. hub_repo: the Hub repo the export will be pushed to (the card's loading snippet names it)."""
    from .. import lora
    from .model_card import write_card
    from .persist import Pretrained
    from .registry import BUNDLED_PIPELINES, is_diffusers_spec, load_model, with_options

    if fmt not in FORMATS:
        raise ValueError(f"export format '{fmt}' is not accepted; accepted: {', '.join(FORMATS)}")
    if hub_repo is not None:
        check_repo_id(hub_repo)  # before the work, not after it
    run, out = Path(run_dir), Path(out_dir)
    _check_out(out)
    recipe = _read_recipe(run)
    spec = str(recipe.get("model", ""))
    train = recipe.get("train", {})
    finetune = train.get("finetune", "lora")
    is_diffusers = is_diffusers_spec(spec)
    if fmt == "diffusers-lora" and not is_diffusers:
        raise ValueError(f"--format diffusers-lora needs a diffusers model (diffusers:<path-or-hub-id> or a bundled "
                         f"pipeline: {', '.join(BUNDLED_PIPELINES)}); run {run} "
                         f"trained '{spec}': export it with --format merged")
    if fmt == "diffusers-lora" and finetune != "lora":
        raise ValueError(f"--format diffusers-lora needs a LoRA run; run {run} is a full fine-tune (train.finetune="
                         f"{finetune}), which has no LoRA: export it with --format merged")
    weights, iteration = _load_weights(run), _checkpoint_iteration(run)

    adapter = load_model(_export_spec(with_options(spec, recipe.get("model_options") or {})))  # as the trainer did
    module = getattr(adapter, "module", None)
    if module is None:
        raise ValueError(f"cannot export {run}: model '{spec}' has no trainable network")
    if finetune == "lora":
        rank, alpha = int(train["lora_rank"]), float(train["lora_alpha"])
        lora.add_lora(module, rank, alpha, tuple(train["lora_targets"]))
        lora.load_lora_state_dict(module, weights)
    else:
        missing, unexpected = module.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise ValueError(f"cannot export {run}: its weights do not fit '{spec}' (first missing keys "
                             f"{sorted(missing)[:3]}, first unexpected keys {sorted(unexpected)[:3]})")
    if fmt == "merged" and not (is_diffusers or isinstance(module, Pretrained)):
        raise ValueError(f"--format merged supports built-in and diffusers models; '{spec}' is neither")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        peft_lora = None
        if fmt == "diffusers-lora":
            prefix = _write_diffusers_lora(adapter, module, rank, alpha, tmp)
            peft_lora = (rank, alpha, _write_adapter_config(module, rank, spec, tmp), prefix)
        else:
            if finetune == "lora":
                lora.merge_lora(module)
            if is_diffusers:
                _save_pipeline(adapter, tmp)
            else:  # an adapter that saves more than its network (a token model + its tokenizer); the network
                (adapter if hasattr(adapter, "save_pretrained") else module).save_pretrained(tmp)
        pipe = getattr(adapter, "pipe", None)
        write_card(tmp, run, recipe, spec, fmt, iteration, hub_repo or str(out_dir),
                   type(pipe).__name__ if pipe is not None else None, peft_lora)
        _check_out(out)
        os.replace(tmp, out)  # onto a missing or empty folder
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _save_pipeline(adapter, out: Path) -> None:
    """pipe.save_pretrained, plus what the source folder held beside the components that save_pretrained does not
    write: its sampling.json (the steps and guidance the model is meant to be sampled with) and the tokenizers'
    vocab.json / merges.txt (which transformers 4 reads)."""
    from .pipeline_files import SAMPLING_NAME, quiet

    with quiet():  # no "tokenizer_3=None cannot be saved" for an SD3 without T5
        adapter.pipe.save_pretrained(out)
    src = getattr(adapter, "source_dir", None)
    if src is None:
        return
    carried = [Path(SAMPLING_NAME)] + [Path(t) / f for t in ("tokenizer", "tokenizer_2", "tokenizer_3")
                                       for f in ("vocab.json", "merges.txt")]
    for rel in carried:
        if (src / rel).is_file() and (out / rel.parent).is_dir() and not (out / rel).exists():
            shutil.copyfile(src / rel, out / rel)


def _write_diffusers_lora(adapter, module, rank: int, alpha: float, out: Path) -> str:
    """The peft LoRA state dict (get_peft_model_state_dict: `<module path>.lora_A.weight` / `.lora_B.weight`,
    the format diffusers itself writes from a peft-injected model), alpha / rank folded into the B matrices,
    written by the pipeline class's save_lora_weights (UNet LoRA for SD/SDXL, transformer LoRA for SD3/FLUX and
    the video pipelines, Wan and LTX: WanLoraLoaderMixin / LTXVideoLoraLoaderMixin load it).

    diffusers' convert_state_dict_to_diffusers is not applied: it renames only attention projections
    (to_q/k/v/out.0 -> lora.down/up), and a LoRA on other layers too would come out half renamed, a mix that
    load_lora_weights loads only partly (measured: the attention LoRA layers were dropped).
    -> the keys' prefix: unet or transformer."""
    from .. import lora

    scale = alpha / rank
    state = {k: (v * scale if ".lora_B." in k else v).detach().contiguous().cpu()
             for k, v in lora.lora_state_dict(module).items()}
    prefix = "unet" if adapter.family == "diffusion" else "transformer"
    type(adapter.pipe).save_lora_weights(str(out), safe_serialization=True, **{f"{prefix}_lora_layers": state})
    return prefix


def peft_targets(module) -> list[str]:
    """peft `target_modules` naming exactly the module's LoRA layers: their short names (`to_q`, `to_out.0`)
    when those match no other layer (peft matches a name by suffix), else the full module paths."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from ..lora import _short

    # the layers of the plain network: peft's wrappers add `.base_layer` and `.lora_*` children
    plain = [n for n, _ in module.named_modules()
             if n and not any(part == "base_layer" or part.startswith("lora_") for part in n.split("."))]
    paths = [n for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)]
    short = list(dict.fromkeys(_short(p) for p in paths))
    hits = {n for n in plain if any(n == t or n.endswith("." + t) for t in short)}
    return short if hits == set(paths) else paths


def _write_adapter_config(module, rank: int, spec: str, out: Path) -> list[str]:
    """adapter_config.json beside the LoRA weights, as peft writes it. lora_alpha = r: the run's alpha / rank
    is folded into the B matrices of the weight file, so scale 1 is what reproduces the trained model.
    -> the target_modules written."""
    from peft import LoraConfig

    from .model_card import describe_base

    base = describe_base(spec)
    targets = peft_targets(module)
    LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, inference_mode=True,
               base_model_name_or_path=base.hub_id or base.path).save_pretrained(str(out))
    return targets


def check_repo_id(repo: str) -> None:
    """A Hub repo id: NAME or OWNER/NAME (letters, digits, '-', '_', '.'), or a one-line ValueError."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise ValueError(f"--push-to-hub '{repo}' is not a Hub repo id; accepted: NAME or OWNER/NAME "
                         f"(letters, digits, '-', '_', '.')") from None


def push_to_hub(out: str | os.PathLike, repo: str, private: bool = False) -> str:
    """Upload a finished export folder to the Hub model repo `repo` (created if missing) with the token of
    huggingface_hub's usual login / HF_TOKEN. -> the repo's URL. Any failure is one line (ValueError) that
    says the export itself is complete, and where."""
    import huggingface_hub
    from huggingface_hub import HfApi, constants

    out = Path(out)
    check_repo_id(repo)
    done = f"the export is complete in {out} (upload it later with `hf upload {repo} {out}`)"
    if constants.is_offline_mode():
        raise ValueError(f"cannot push to the Hub: HF_HUB_OFFLINE is set; {done}")
    if not huggingface_hub.get_token():
        raise ValueError(f"cannot push to the Hub: no Hugging Face token (run `hf auth login` or set HF_TOKEN); {done}")
    api = HfApi()
    try:
        # private=None when not asked: the Hub's (or the organisation's) default visibility for a new repo
        url = api.create_repo(repo, private=private or None, repo_type="model", exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(out), repo_type="model",
                          commit_message=f"visalign export ({out.name})")
    except Exception as e:  # noqa: BLE001 - network, auth, permissions: the user needs the reason and the folder
        reason = " ".join(str(e).split())[:300]
        raise ValueError(f"cannot push to the Hub repo {repo} ({type(e).__name__}: {reason}); {done}") from None
    return str(url)
