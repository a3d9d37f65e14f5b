"""`visalign list|sample|eval|pretrain ...`. Every error the user can cause ends as one line on stderr
and exit code 2."""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from .images import atomic_write_bytes, save_samples


def cmd_list(args) -> None:
    from .algorithms import ALGORITHMS
    from .config import load_recipe_dict, recipe_names
    from .models.registry import MODELS
    from .rewards import REWARDS

    from .pretraining import PRETRAIN_KINDS
    from .prompts import PROMPT_SETS

    for title, reg in (("models", MODELS), ("rewards", REWARDS), ("algorithms", ALGORITHMS),
                       ("pretraining kinds", PRETRAIN_KINDS)):
        print(f"{title}:")
        for name in reg.names():
            print(f"  {name:<22} {reg.doc(name)}")
    print("prompt sets (train --prompts / eval --prompts):")
    for name in PROMPT_SETS.names():
        what = (PROMPT_SETS.get(name).__doc__ or "").strip().split("\n")[0]
        print(f"  {name:<22} {what} (forms: {PROMPT_SETS.doc(name)})")
    print(f"  {'animals':<22} animals: common animal names (DDPO's kind of prompt set)")
    print(f"  {'file:PATH':<22} file:PATH: one prompt a line, a quarter held out")
    print("recipes:")
    for name in recipe_names():
        d = load_recipe_dict(name)
        print(f"  {name:<22} [{d.get('kind', 'train')}] {d.get('description', '')}")


def cmd_sample(args) -> None:
    from .models.registry import load_generator
    from .prompts import PromptError

    gen = load_generator(args.model)
    parse = getattr(gen, "parse", None)  # a world model's grammar; a user's diffusers pipeline takes any prompt
    for p in args.prompt if parse is not None else []:
        try:
            parse(p)
        except PromptError as e:
            raise PromptError(f"model '{args.model}' draws only its world's words (a diffusers:<path-or-hub-id> "
                              f"pipeline takes any prompt): {e}") from None
    prompts = [p for p in args.prompt for _ in range(args.n)]
    seeds = [args.seed * 1_000_000 + i for i in range(len(prompts))]
    images = gen.generate(prompts, seeds)
    written = save_samples(images, Path(args.out), cols=args.n)  # videos: frame strips, and a GIF beside them
    if images.ndim == 5:
        print(f"wrote {len(images)} videos of {images.shape[1]} frames ({len(args.prompt)} prompts x {args.n}): "
              f"{written[1]} (animated grid), {written[0]} (frames, a row per video)")
    else:
        print(f"wrote {len(images)} images ({len(args.prompt)} prompts x {args.n}) to {args.out}")


def cmd_eval(args) -> None:
    import numpy as np

    from .evaluate import ProgressGenerator, category_means, evaluate_reward, format_table, reward_scores
    from .models.registry import load_generator
    from .prompts import load_prompt_set
    from .rewards import load_reward_spec

    prompt_set = load_prompt_set(args.prompts)
    if args.reward is None and not prompt_set.verifier:
        raise ValueError(f"prompt set '{args.prompts}' has no verifier; give --reward NAME to score it (e.g. --reward "
                         f"ocr for text)")
    # as the trainer's evaluation: a set's own prompts are held to the world grammar only where it has a verifier
    # (a diffusers model on `animals` must not be held to the shapes words)
    gen = ProgressGenerator(load_generator(args.model, validate=prompt_set.verifier))  # a bar with ETA on a terminal
    split = "train" if args.split == "train" else "eval"
    start = time.time()
    judges = {spec: load_reward_spec(spec) for spec in args.judge}
    if args.reward is None:  # the set's evaluator (GenEval-S: the verifier, GenEval's rules and the exact reading)
        result = prompt_set.evaluator(gen, args.per_category, args.seed, return_images=bool(judges), split=split)
    else:  # the mean of the reward over the set's items
        result = evaluate_reward(gen, load_reward_spec(args.reward), prompt_set, args.per_category, args.seed, split)
    if judges:
        cats = [c for c, _, _ in prompt_set.eval_items(args.per_category, args.seed, split)]
        result["judges"] = {}
        for spec, judge in judges.items():
            scores = reward_scores(judge, result["images"], result["prompts"])  # [N]
            per = category_means(cats, scores, result["categories"])
            result["judges"][spec] = {"overall": float(np.mean(list(per.values()))), "categories": per}
    result = {k: v for k, v in result.items() if k not in ("images", "prompts", "scores", "correct", "readings")}
    result["seconds"] = round(time.time() - start, 2)
    result.update(model=args.model, split=args.split, prompt_set=args.prompts, reward=args.reward)
    print(format_table(result))
    for spec, j in result.get("judges", {}).items():
        cats = ", ".join(f"{c} {v:.3f}" for c, v in j["categories"].items())
        print(f"judge {spec}: overall {j['overall']:.3f}; {cats}")
    print(f"{result['n']} images in {result['seconds']:.1f} s")
    if args.out:
        atomic_write_bytes(Path(args.out), json.dumps(result, indent=2).encode())
        print(f"wrote {args.out}")


def cmd_pretrain(args) -> None:
    from .config import apply_overrides, load_recipe_dict
    from .pretraining import PRETRAIN_KINDS, kinds
    from .metrics import ConsoleLog

    log = ConsoleLog()  # lines above a progress bar with ETA (on a terminal)
    data = apply_overrides(load_recipe_dict(args.recipe), args.overrides)
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in PRETRAIN_KINDS:  # a registered kind (visalign/pretraining.py)
        raise ValueError(f"recipe '{args.recipe}' is not a pretraining recipe (kind: {kind}; accepted: "
                         f"{', '.join(kinds())})")
    entry = PRETRAIN_KINDS.get(kind)
    start = time.time()
    entry.run(data, args.out, log)
    print(entry.done.format(minutes=(time.time() - start) / 60, out=args.out))


def cmd_train(args) -> None:
    from .recipe import load_train_recipe
    from .distributed import Distributed
    from .trainer.trainer import Trainer, TrainingInterrupted

    resume = args.resume  # `--resume k=v` is an override, not a CHECKPOINT (parse_args)
    recipe, resolved = load_train_recipe(args.recipe, args.overrides)
    dist = Distributed()
    trainer = Trainer(recipe, resolved, args.out, resume=resume, dist=dist)
    try:
        trainer.train()
    except TrainingInterrupted as e:  # the command that goes on from where it stopped
        again = ["visalign", "train", args.recipe, *args.overrides, "--out", args.out]
        if not e.resumable:
            raise TrainingInterrupted(f"{e}; start it again: {shlex.join(again)}") from None
        raise TrainingInterrupted(f"{e}: {shlex.join([*again, '--resume'])}", resumable=True) from None
    if dist.is_main:
        from .monitor import summary_lines
        from .report import write_report
        from .metrics import read_metrics

        # the whole run's evaluations (RUN/metrics.jsonl), not this process's: after a resume, from the base model's
        evals = sorted((r for r in read_metrics(Path(args.out)) if "eval_overall" in r), key=lambda r: r["iteration"])
        if evals:
            print("\n".join(summary_lines(evals[0], evals[-1], trainer.eval_label)))
        print(f"report: {write_report(args.out)}")
    dist.shutdown()


def cmd_diagnose(args) -> None:
    import tempfile

    from .recipe import load_train_recipe
    from .distributed import Distributed
    from .images import atomic_write_bytes
    from .trainer.trainer import Trainer

    recipe, resolved = load_train_recipe(args.recipe, args.overrides)
    dist = Distributed()
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        res = Trainer(recipe, resolved, tmp, dist=dist, progress=False).measure_signal(args.batches)
    res["wall_s"] = time.time() - start
    if dist.is_main:  # what it prints and what it writes: the same numbers, names and rounding
        from .trainer.diagnostics import rounded, signal_summary

        res = rounded(res)
        print("\n".join(signal_summary(res, args.recipe, recipe.train.lr)))
        if args.out:
            atomic_write_bytes(Path(args.out), json.dumps(res, indent=2).encode())
    dist.shutdown()


def resolved_recipe(name_or_path: str, overrides: list[str]) -> dict:
    """A recipe with its overrides applied, built and checked as the command that runs it builds it -> the
    resolved dict: for a train recipe what `train` writes as RUN/recipe.json (every default filled in); for a
    pretraining recipe its kind and fields (model: as given; it is checked, and the model's own defaults apply)."""
    import dataclasses

    from .config import ConfigError, apply_overrides, build, load_recipe_dict

    from .recipe import load_train_recipe
    from .pretraining import PRETRAIN_KINDS, kinds

    data = apply_overrides(load_recipe_dict(name_or_path), overrides)
    kind = data.pop("kind", "train")
    if kind == "train":
        return load_train_recipe(name_or_path, overrides)[1]
    if not isinstance(kind, str) or kind not in PRETRAIN_KINDS:
        raise ConfigError(f"recipe '{name_or_path}' has kind '{kind}'; accepted: train, {', '.join(kinds())}")
    cls, model_cls = PRETRAIN_KINDS.get(kind).recipe, PRETRAIN_KINDS.get(kind).model
    recipe = build(cls, data)
    build(model_cls, recipe.model, "model")  # typed: an unknown or mistyped model key is refused here too
    return {"kind": kind, **dataclasses.asdict(recipe)}


def cmd_config(args) -> None:
    from .metrics import recipe_yaml

    print(recipe_yaml(resolved_recipe(args.recipe, args.overrides)), end="")


def cmd_report(args) -> None:
    from .report import write_report

    print(f"report: {write_report(args.run)}")


def cmd_export(args) -> None:
    from .models.export import export_run, push_to_hub

    if args.private and not args.push_to_hub:
        raise ValueError("--private applies to an upload: give it with --push-to-hub REPO")
    out = export_run(args.run, args.format, args.out, hub_repo=args.push_to_hub)
    print(f"wrote {args.format} export of {args.run} to {out} (model card: {out / 'README.md'})")
    if args.push_to_hub:  # only when asked: nothing leaves the machine otherwise
        print(f"uploaded {out} to {push_to_hub(out, args.push_to_hub, private=args.private)}")


def cmd_make_pairs(args) -> None:
    from .config import parse_override
    from .models.registry import load_generator
    from .pairs import make_pairs
    from .prompts import load_prompt_set
    from .rewards import load_reward

    options = {".".join(key): value for key, value in map(parse_override, args.reward_option)}
    reward = load_reward(args.reward, **options)
    prompt_set = load_prompt_set(args.prompts)
    if args.n_prompts < 1 or args.per_prompt < 2:
        raise ValueError(f"--n-prompts must be >= 1 and --per-prompt >= 2, got {args.n_prompts}, {args.per_prompt}")
    import numpy as np

    rng = np.random.default_rng(args.seed)
    cats = prompt_set.categories
    prompts = [prompt_set.train[c][rng.integers(len(prompt_set.train[c]))]
               for c in (cats[i % len(cats)] for i in range(args.n_prompts))]
    start = time.time()
    # as eval and the trainer: a set's prompts are held to the world grammar only where it has a verifier
    gen = load_generator(args.model, validate=prompt_set.verifier)
    from .metrics import ConsoleLog

    meta = make_pairs(gen, reward, prompts, args.per_prompt, args.seed, args.out,
                      {"model": args.model, "reward": args.reward, "reward_options": options, "prompts": args.prompts},
                      log=ConsoleLog())
    print(f"wrote {meta['pairs']} pairs from {len(prompts)} prompts x {args.per_prompt} samples to {args.out} "
          f"in {time.time() - start:.0f} s")


def cmd_compare(args) -> None:
    from .compare import compare
    from .metrics import ConsoleLog

    res = compare(args.algorithms, budget_nfe=args.budget_nfe, budget_minutes=args.budget_minutes, model=args.model,
                  prompts=args.prompts, out=args.out, evals=args.evals, per_category=args.per_category,
                  seed=args.seed, overrides=args.set, recipe_budget=args.budget_recipe, pair_prompts=args.pair_prompts,
                  log=ConsoleLog())
    print(res["header"])
    print(res["table"])
    print(f"wrote {Path(args.out) / 'compare.md'} and {Path(args.out) / 'compare.html'}")


def cmd_serve_reward(args) -> None:
    from .config import parse_override
    from .rewards.server import Limits, serve

    options = {".".join(key): value for key, value in map(parse_override, args.option)}
    limits = Limits(max_pixels=args.max_pixels, max_request_pixels=args.max_request_pixels,
                    max_request_bytes=int(args.max_request_mb * 2**20),
                    max_buffered_bytes=4 * int(args.max_request_mb * 2**20), max_connections=args.max_connections,
                    read_timeout=args.timeout, deadline=args.deadline)
    serve(args.name, args.port, options, args.host, args.device, limits, args.token)


RECIPE_HELP = "a recipe name (visalign list), a YAML file, or a run's recipe.json (or its run folder) to run it again"
MODEL_HELP = ("model spec; sampler options may follow it: builtin:shapes-flow?steps=10&guidance=4, "
              "builtin:shapes-ddpm?kind=ddim&eta=1&steps=10 (the stochastic sampler a DDPO run trains); "
              "diffusers:<path-or-hub-id> loads offline, diffusers:ID?local_files_only=false may download")


class _Parser(argparse.ArgumentParser):
    """argparse's refusals as the commands' own: one line, `visalign CMD: error: ...` (no usage block), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty")
    return text


def _device(text: str) -> str:
    """--device: a torch device this machine has (cuda without a GPU would fail only once the reward moves)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"'{text}' is not a device; accepted: cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"'{text}': this machine has no CUDA device; accepted here: cpu")
    return text


def build_parser() -> argparse.ArgumentParser:
    from typing import Annotated

    from . import __version__
    from .config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range, arg_type

    p = _Parser(prog="visalign", description="RL fine-tuning of visual generative models")
    p.add_argument("--version", action="version", version=f"visalign {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="models, recipes").set_defaults(fn=cmd_list)

    s = sub.add_parser("sample", help="sample a grid of images (a video model: a GIF grid and a PNG of frames)")
    s.add_argument("--model", required=True, help=MODEL_HELP)
    s.add_argument("--prompt", required=True, action="append", help="repeat for several rows")
    s.add_argument("--n", type=arg_type(PositiveInt), default=8, help="images (or videos) per prompt")
    s.add_argument("--seed", type=arg_type(NonNegativeInt), default=0)
    s.add_argument("--out", default="grid.png", help="the PNG grid; a video model writes its frames here, a row per "
                   "video, and an animated GIF grid beside it (OUT with .gif)")
    s.set_defaults(fn=cmd_sample)

    e = sub.add_parser("eval", help="GenEval-S (or a prompt set's mean reward) on the held-out eval prompts")
    e.add_argument("--model", required=True, help=MODEL_HELP)
    e.add_argument("--prompts", default="geneval-s", help="prompt set: geneval-s (the verifier: GenEval's rules "
                   "and the exact reading), motion (GenEval-S Motion, videos: its verifier), text, animals, "
                   "file:PATH")
    e.add_argument("--reward", default=None, help="score by this reward's mean instead of the verifier (a set without "
                   "one needs it: --prompts text --reward ocr); options as in model specs: "
                   "'ocr?psm=8&preprocess=otsu-crop'")
    e.add_argument("--judge", action="append", default=[], metavar="REWARD",
                   help="also score the same images by this reward, per category (repeatable): e.g. geneval_s_learned")
    e.add_argument("--per-category", type=arg_type(PositiveInt), default=50)
    e.add_argument("--seed", type=arg_type(NonNegativeInt), default=0)
    e.add_argument("--split", choices=("held-out", "train"), default="held-out",
                   help="the prompts: held-out (the benchmark) or train (how much of a gain is memorised)")
    e.add_argument("--out", default=None, help="eval.json")
    e.set_defaults(fn=cmd_eval)

    r = sub.add_parser("train", help="RL fine-tuning from a recipe")
    r.add_argument("recipe", help=RECIPE_HELP)
    r.add_argument("overrides", nargs="*", help="key=value, anywhere on the line, e.g. train.iterations=10 "
                   "algorithm_options.kl_beta=0.01")
    r.add_argument("--out", required=True, help="run folder")
    r.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue the run in --out from its newest complete checkpoint, or from CHECKPOINT, one of its "
                        "checkpoint folders (iter-NNNNNN or RUN/checkpoints/iter-NNNNNN): it goes on as if it had "
                        "stopped there")
    r.set_defaults(fn=cmd_train)

    d = sub.add_parser("diagnose", help="measure the gradient signal share of a training recipe before a long run")
    d.add_argument("recipe", help=RECIPE_HELP)
    d.add_argument("overrides", nargs="*", help="key=value, anywhere on the line, as for train")
    d.add_argument("--batches", type=arg_type(Annotated[int, Range(ge=2)]), default=4, help="independent rollout batches to compare (>= 2)")
    d.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    d.set_defaults(fn=cmd_diagnose)

    rp = sub.add_parser("report", help="write RUN/report.html")
    rp.add_argument("run")
    rp.set_defaults(fn=cmd_report)

    x = sub.add_parser("export", help="export a run's weights: diffusers LoRA or a merged model")
    x.add_argument("run")
    x.add_argument("--format", required=True, help="diffusers-lora | merged")
    x.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    x.add_argument("--push-to-hub", metavar="REPO", default=None,
                   help="then upload the folder to this Hugging Face model repo (OWNER/NAME; created if missing; "
                   "the token of `hf auth login` or HF_TOKEN)")
    x.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    x.set_defaults(fn=cmd_export)

    mp = sub.add_parser("make-pairs", help="sample a preference-pairs dataset (for diffusion_dpo) ranked by a reward")
    mp.add_argument("--model", required=True, help=MODEL_HELP)
    mp.add_argument("--reward", default="geneval_s")
    mp.add_argument("--reward-option", action="append", default=[],
                    help="key=value, repeatable; or reward_options.KEY=VALUE anywhere on the line")
    mp.add_argument("--prompts", default="geneval-s", help="prompt set; its train prompts, categories in turn")
    mp.add_argument("--n-prompts", type=arg_type(PositiveInt), default=200)
    mp.add_argument("--per-prompt", type=arg_type(Annotated[int, Range(ge=2)]), default=4, help="samples per prompt; the i-th best vs the i-th worst")
    mp.add_argument("--seed", type=arg_type(NonNegativeInt), default=0)
    mp.add_argument("--out", required=True, help="dataset folder (must not exist)")
    mp.set_defaults(fn=cmd_make_pairs)

    c = sub.add_parser("compare", help="several algorithms on one model, prompt set and budget: table + curves")
    c.add_argument("algorithms", nargs="+", help="e.g. grpo ddpo nft diffusion_dpo online_dpo refl grpo:kl_beta=0.04")
    c.add_argument("--budget-nfe", type=arg_type(NonNegativeInt), default=0, help="network evaluations of training per algorithm")
    c.add_argument("--budget-minutes", type=arg_type(NonNegativeFloat), default=0.0, help="or: training wall minutes per algorithm")
    c.add_argument("--budget-recipe", action="store_true",
                   help="or: each recipe's own iterations and evaluation points (--evals is then unused)")
    c.add_argument("--model", default="builtin:shapes-flow")
    c.add_argument("--pair-prompts", type=arg_type(PositiveInt), default=400,
                   help="diffusion_dpo's pairs: train prompts sampled 4 times each, best vs worst (default 400)")
    c.add_argument("--prompts", default="geneval-s", help="geneval-s, or geneval-s:CAT,CAT,CAT to hold categories out")
    c.add_argument("--evals", type=arg_type(PositiveInt), default=4, help="held-out evaluations along each run")
    c.add_argument("--per-category", type=arg_type(PositiveInt), default=50)
    c.add_argument("--seed", type=arg_type(NonNegativeInt), default=0)
    c.add_argument("--set", action="append", default=[],
                   help="key=value applied to every recipe, repeatable; or key=value anywhere on the line")
    c.add_argument("--out", default="runs/compare")
    c.set_defaults(fn=cmd_compare)

    sr = sub.add_parser("serve-reward", help="serve a reward over HTTP (JSON + PNG) for the `remote` reward")
    sr.add_argument("name", help="a registered reward (see `visalign list`)")
    sr.add_argument("--port", type=arg_type(Annotated[int, Range(ge=0, le=65535)]), required=True,
                    help="0: a free port the system picks")
    sr.add_argument("--host", type=_non_empty, default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    sr.add_argument("--device", type=_device, default="cpu", help="where the reward's networks run, e.g. cuda")
    sr.add_argument("--option", action="append", default=[],
                    help="reward option key=value, repeatable; or key=value anywhere on the line")
    sr.add_argument("--token", default=None, help="shared token clients must send as 'Authorization: Bearer TOKEN' "
                    "(default: $VISALIGN_REWARD_TOKEN, which `ps` does not show; none: no authentication)")
    sr.add_argument("--max-pixels", type=arg_type(PositiveInt), default=4096 * 4096,
                    help="pixels of one image, read from its PNG header before decoding (default 4096x4096)")
    sr.add_argument("--max-request-pixels", type=arg_type(PositiveInt), default=2**25,
                    help="pixels of all images of one request (default 2^25: 32 images of 1024x1024)")
    sr.add_argument("--max-request-mb", type=arg_type(PositiveFloat), default=128,
                    help="MiB of one request body (default 128); bodies held in memory at once: at most 4x this")
    sr.add_argument("--max-connections", type=arg_type(PositiveInt), default=128,
                    help="connections handled at once; more are answered 503 (default 128)")
    sr.add_argument("--timeout", type=arg_type(PositiveFloat), default=10.0, help="seconds one read from a client may wait (default 10)")
    sr.add_argument("--deadline", type=arg_type(PositiveFloat), default=60.0,
                    help="seconds a client has to send its whole request; slower ones are dropped (default 60)")
    sr.set_defaults(fn=cmd_serve_reward)

    t = sub.add_parser("pretrain", help="pretrain a built-in model from a recipe")
    t.add_argument("recipe", help="a pretraining recipe name (visalign list) or a YAML file")
    t.add_argument("overrides", nargs="*", help="key=value, anywhere on the line, e.g. train.steps=100")
    t.add_argument("--out", required=True)
    t.set_defaults(fn=cmd_pretrain)

    cf = sub.add_parser("config", help="print a recipe resolved (YAML: what `train` writes as RUN/recipe.json), "
                        "checked")
    cf.add_argument("recipe", help=RECIPE_HELP + "; or a pretraining recipe")
    cf.add_argument("overrides", nargs="*", help="key=value, anywhere on the line, as for train")
    cf.set_defaults(fn=cmd_config)

    for parser in (p, *sub.choices.values()):  # every command's help shows its defaults
        parser.formatter_class = HelpFormatter
        for action in parser._actions:
            if action.help is None and action.option_strings and _shown_default(action.default):
                action.help = "(default: %(default)s)"
    return p


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help (argparse's), except where the help already says it or there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or not _shown_default(action.default):
            return text
        return super()._get_help_string(action)


def _shown_default(default) -> bool:
    return default is not None and default is not False and default != [] and default is not argparse.SUPPRESS


# Where each command's key=value words go: recipe overrides; reward options (make-pairs: as a recipe names them,
# reward_options.KEY=VALUE, beside --reward-option KEY=VALUE; serve-reward: KEY=VALUE beside --option); compare:
# overrides of every recipe, beside --set.
KEY_VALUES = {"train": "overrides", "diagnose": "overrides", "pretrain": "overrides", "config": "overrides",
              "make-pairs": "reward_option", "serve-reward": "option", "compare": "set"}


def _is_key_value(word: str) -> bool:
    """key=value (not an option, not a compare spec 'grpo:kl_beta=0.04', whose ':' comes before the '=')."""
    key = word.partition("=")[0]
    return "=" in word and not word.startswith("-") and ":" not in key and key.strip() != ""


def parse_args(argv=None) -> argparse.Namespace:
    """The parsed command line; key=value words may come anywhere after the command (`train R --out D k=v`):
    argparse stops a positional list at the first option and would call the rest unrecognised."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser.parse_known_args(argv)
    dest = KEY_VALUES.get(args.command)
    resume = getattr(args, "resume", None)
    if isinstance(resume, str) and _is_key_value(resume) and not Path(resume).exists():
        # `train R --resume k=v`: argparse took the override for the optional CHECKPOINT; it goes back among the
        # overrides where it stood on the line (a later k=v still wins)
        pool, ordered = [*args.overrides, resume], []
        for word in argv:
            if word in pool:
                pool.remove(word)
                ordered.append(word)
        args.overrides, args.resume = ordered, True
    if args.command == "compare":  # `compare grpo train.lr=1e-4`: the override is no algorithm
        extra = [a for a in args.algorithms if _is_key_value(a)] + extra
        args.algorithms = [a for a in args.algorithms if not _is_key_value(a)]
        if not args.algorithms:
            parser.error("compare: give at least one algorithm, e.g. grpo ddpo nft")
    if extra and dest and all(_is_key_value(e) for e in extra):
        if args.command == "make-pairs" and not all(e.startswith("reward_options.") for e in extra):
            parser.error(f"make-pairs takes key=value as reward options: reward_options.KEY=VALUE (or "
                         f"--reward-option KEY=VALUE), got {' '.join(extra)}")
        extra = [e.removeprefix("reward_options.") for e in extra] if dest in ("reward_option", "option") else extra
        setattr(args, dest, list(getattr(args, dest)) + extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def check_paths(args: argparse.Namespace) -> None:
    """The command's output path, before anything loads: never empty (that would write into the current
    folder); an image or JSON file where a file is written (an existing one of that kind is overwritten), a
    folder where a run or a model is."""
    from .runfolder import check_out, check_out_file, check_out_folder

    out = getattr(args, "out", None)
    if args.command == "sample":
        check_out_file(out, (".png",))  # save_samples writes PNG (videos: and a GIF beside it)
    elif args.command in ("eval", "diagnose"):
        check_out_file(out, (".json",))
    elif args.command in ("train", "pretrain", "compare"):
        check_out_folder(out)
    else:
        check_out(out)
    if hasattr(args, "run"):  # report, export: an empty RUN would be the current folder
        check_out(args.run, "RUN")


def main(argv: list[str] | None = None) -> int:
    import torch

    from .algorithms import CapabilityError
    from .config import ConfigError
    from .models.persist import CheckpointError
    from .registry import RegistryError
    from .rewards.server import RemoteRewardError
    from .runfolder import RunFolderError, os_error_line
    from .checkpoint import ResumeError
    from .trainer.trainer import TrainingInterrupted, TrainingStopped
    from .prompts import PromptError

    threads = os.environ.get("VISALIGN_THREADS")
    if threads is not None:
        if not threads.strip().isdigit() or int(threads) < 1:
            print(f"visalign: error: VISALIGN_THREADS={threads!r} is not a thread count; accepted: an integer >= 1",
                  file=sys.stderr)
            return 2
        torch.set_num_threads(int(threads))
        import cv2  # OpenCV's own pool (the motion_smoothness reward's optical flow) is not torch's

        cv2.setNumThreads(int(threads))
    try:
        args = parse_args(argv)
    except SystemExit as e:  # a parser error (one line already printed) or --help / --version: a return code, so
        return e.code if isinstance(e.code, int) else 2  # main() answers the same in-process as on the shell
    terminated = []  # SIGTERM (kill, a scheduler's stop) ends a command as Ctrl-C does, with exit code 143
    old_term = _on_sigterm(terminated)
    try:
        check_paths(args)
        args.fn(args)
    except (PromptError, ConfigError, CheckpointError, RegistryError, ResumeError, CapabilityError, TrainingStopped,
            RemoteRewardError, RunFolderError, ValueError, FileNotFoundError) as e:
        print(f"visalign {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:  # Ctrl-C in training: where it stopped and how to go on
        print(f"visalign {args.command}: {'terminated (SIGTERM), ' if terminated else ''}{e}", file=sys.stderr)
        return 143 if terminated else 130
    except KeyboardInterrupt:  # Ctrl-C elsewhere (loading, sampling): nothing to resume
        print(f"visalign {args.command}: {'terminated (SIGTERM)' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:  # `visalign list | head`: the reader is gone; nothing left to say, and nowhere to say it
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error as Python flushes
        except (OSError, ValueError, io.UnsupportedOperation):
            pass
        return 141
    except OSError as e:  # a path's permissions, a full or read-only disk, a busy port; any other is a bug
        port = getattr(args, "port", None)
        where = getattr(args, "out", None) or getattr(args, "run", None) or (f"port {port}" if port else None)
        line = os_error_line(e, where, training=args.command == "train")
        if line is None:
            raise
        print(f"visalign {args.command}: error: {line}", file=sys.stderr)
        return 2
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so that it ends as Ctrl-C ends it (a run: at its last checkpoint,
    with the command that resumes it)."""


def _on_sigterm(flag: list):
    """Turn SIGTERM into Terminated for the command's length (main thread only) -> the handler it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        flag.append(signum)
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())
