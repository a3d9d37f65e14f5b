"""`visalign list|sample|eval|pretrain ...`. Every error the user can cause ends as one line on stderr
and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .images import atomic_write_bytes, save_grid


def cmd_list(args) -> None:
    from .algorithms import ALGORITHMS
    from .config import load_recipe_dict, recipe_names
    from .models.registry import MODELS
    from .rewards import REWARDS

    for title, reg in (("models", MODELS), ("rewards", REWARDS), ("algorithms", ALGORITHMS)):
        print(f"{title}:")
        for name in reg.names():
            print(f"  {name:<22} {reg.doc(name)}")
    print("recipes:")
    for name in recipe_names():
        d = load_recipe_dict(name)
        print(f"  {name:<22} [{d.get('kind', 'train')}] {d.get('description', '')}")


def cmd_sample(args) -> None:
    from .models.registry import load_generator
    from .world.grammar import parse_prompt

    gen = load_generator(args.model)
    for p in args.prompt:  # the model's own grammar (a built-in text model: the text task's), GenEval-S otherwise
        getattr(gen, "parse", parse_prompt)(p)
    prompts = [p for p in args.prompt for _ in range(args.n)]
    seeds = [args.seed * 1_000_000 + i for i in range(len(prompts))]
    images = gen.generate(prompts, seeds)
    save_grid(images, Path(args.out), cols=args.n)
    print(f"wrote {len(images)} images ({len(args.prompt)} prompts x {args.n}) to {args.out}")


def cmd_eval(args) -> None:
    import numpy as np

    from .evaluate import category_means, evaluate, evaluate_reward, format_table, reward_scores
    from .models.registry import load_generator
    from .prompts import load_prompt_set
    from .rewards import load_reward_spec

    prompt_set = load_prompt_set(args.prompts)
    if args.reward is None and not prompt_set.verifier:
        raise ValueError(f"prompt set '{args.prompts}' has no verifier; give --reward NAME to score it (e.g. --reward "
                         f"ocr for text)")
    # as the trainer's evaluation: a set's own prompts are held to the world grammar only where it has a verifier
    # (a diffusers model on `animals` must not be held to the shapes words)
    gen = load_generator(args.model, validate=prompt_set.verifier)
    split = "train" if args.split == "train" else "eval"
    start = time.time()
    judges = {spec: load_reward_spec(spec) for spec in args.judge}
    if args.reward is None:  # GenEval-S: the verifier (GenEval's rules and the exact reading)
        result = evaluate(gen, args.per_category, args.seed, return_images=bool(judges), split=split)
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
    from .config import ConfigError, PretrainRecipe, apply_overrides, build, load_recipe_dict
    from .models.builtin import ShapesModel, ShapesModelConfig
    from .trainer.pretrain import pretrain

    data = apply_overrides(load_recipe_dict(args.recipe), args.overrides)
    if data.get("kind") == "reward_pretrain":  # the learned GenEval-S reward, not a generator
        from .trainer.reward_pretrain import RewardPretrainRecipe, reward_pretrain
        from .models.reward_net import RewardNetConfig

        data.pop("kind")
        recipe = build(RewardPretrainRecipe, data)
        try:
            model_cfg = RewardNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in recipe.model.items()})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model: {e}") from None
        start = time.time()
        reward_pretrain(model_cfg, recipe.train, args.out, log=lambda m: print(m, flush=True))
        print(f"reward model trained in {(time.time() - start) / 60:.1f} min; written to {args.out}")
        return
    from .trainer import pipeline_pretrain, token_pretrain

    # the autoregressive family (VQ tokenizer, token GPT); the diffusers pipelines (VAE, SD3, SD1.5)
    for module in (token_pretrain, pipeline_pretrain):
        if data.get("kind") in module.KINDS:
            start = time.time()
            module.run_recipe(data, args.out, log=lambda m: print(m, flush=True))
            print(f"pretrained in {(time.time() - start) / 60:.1f} min; model written to {args.out}")
            return
    if data.get("kind") != "pretrain":
        raise ValueError(f"recipe '{args.recipe}' is not a pretraining recipe (kind: {data.get('kind')}; accepted: "
                         f"pretrain, reward_pretrain, {', '.join(token_pretrain.KINDS + pipeline_pretrain.KINDS)})")
    data.pop("kind")
    recipe = build(PretrainRecipe, data)
    init = None
    if recipe.init:
        from .models.registry import load_model

        init = getattr(load_model(recipe.init), "module", None)
        if not isinstance(init, ShapesModel):
            raise ValueError(f"init model '{recipe.init}' is not a built-in shapes model; accepted: "
                             f"builtin:shapes-flow or builtin:shapes-flow?path=DIR")
    model_cfg = init.config if init is not None else ShapesModelConfig.from_dict(recipe.model)
    start = time.time()
    pretrain(model_cfg, recipe.train, args.out, init=init)
    print(f"pretrained in {(time.time() - start) / 60:.1f} min; model written to {args.out}")


def cmd_train(args) -> None:
    from .config import load_train_recipe
    from .distributed import Distributed
    from .trainer.trainer import Trainer

    recipe, resolved = load_train_recipe(args.recipe, args.overrides)
    dist = Distributed()
    trainer = Trainer(recipe, resolved, args.out, resume=args.resume, dist=dist)
    trainer.train()
    if dist.is_main:
        from .monitor import summary_lines
        from .report import write_report
        from .trainer.logging import read_metrics

        evals = [r for r in read_metrics(Path(args.out)) if "eval_overall" in r]  # the base too, after a resume
        if evals:
            print("\n".join(summary_lines(evals[0], evals[-1], trainer.eval_label)))
        print(f"report: {write_report(args.out)}")
    dist.shutdown()


def cmd_diagnose(args) -> None:
    import tempfile

    from .config import load_train_recipe
    from .distributed import Distributed
    from .images import atomic_write_bytes
    from .trainer.trainer import Trainer

    recipe, resolved = load_train_recipe(args.recipe, args.overrides)
    dist = Distributed()
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        res = Trainer(recipe, resolved, tmp, dist=dist, progress=False).measure_signal(args.batches)
    res["wall_s"] = round(time.time() - start, 2)
    if dist.is_main:
        print(f"{args.recipe}: {args.batches} independent batches of {recipe.train.batch_size} rollouts, "
              f"lr={recipe.train.lr:g}")
        for key, value in res.items():
            if key != "warning":
                print(f"  {key:<26} {value:.4g}" if isinstance(value, float) else f"  {key:<26} {value}")
        share = res["signal_share"]
        print(f"one update is {100 * max(share, 0):.0f}% signal; ~{res['batch_for_half_signal']:.0f} rollouts "
              f"per update "
              f"would make it 50%; the run's {res['optimizer_steps']} optimizer steps add up to "
              f"{100 * res['run_signal_share']:.0f}% signal")
        if res["warning"]:
            print(res["warning"])
        if args.out:
            atomic_write_bytes(Path(args.out), json.dumps(res, indent=2).encode())
    dist.shutdown()


def cmd_report(args) -> None:
    from .report import write_report

    print(f"report: {write_report(args.run)}")


def cmd_export(args) -> None:
    from .models.export import export_run

    out = export_run(args.run, args.format, args.out)
    print(f"wrote {args.format} export of {args.run} to {out}")


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
    meta = make_pairs(load_generator(args.model), reward, prompts, args.per_prompt, args.seed, args.out,
                      {"model": args.model, "reward": args.reward, "reward_options": options, "prompts": args.prompts})
    print(f"wrote {meta['pairs']} pairs from {len(prompts)} prompts x {args.per_prompt} samples to {args.out} "
          f"in {time.time() - start:.0f} s")


def cmd_compare(args) -> None:
    from .compare import compare

    res = compare(args.algorithms, budget_nfe=args.budget_nfe, budget_minutes=args.budget_minutes, model=args.model,
                  prompts=args.prompts, out=args.out, evals=args.evals, per_category=args.per_category,
                  seed=args.seed, overrides=args.set, recipe_budget=args.budget_recipe, pair_prompts=args.pair_prompts)
    print(res["header"])
    print(res["table"])
    print(f"wrote {Path(args.out) / 'compare.md'} and {Path(args.out) / 'compare.html'}")


def cmd_serve_reward(args) -> None:
    from .config import parse_override
    from .rewards.server import serve

    options = {".".join(key): value for key, value in map(parse_override, args.option)}
    serve(args.name, args.port, options, args.host, args.device)


MODEL_HELP = ("model spec; sampler options may follow it: builtin:shapes-flow?steps=10&guidance=4, "
              "builtin:shapes-ddpm?kind=ddim&eta=1&steps=10 (the stochastic sampler a DDPO run trains)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="visalign", description="RL fine-tuning of visual generative models")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="models, recipes").set_defaults(fn=cmd_list)

    s = sub.add_parser("sample", help="sample a grid of images")
    s.add_argument("--model", required=True, help=MODEL_HELP)
    s.add_argument("--prompt", required=True, action="append", help="repeat for several rows")
    s.add_argument("--n", type=int, default=8, help="images per prompt")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="grid.png")
    s.set_defaults(fn=cmd_sample)

    e = sub.add_parser("eval", help="GenEval-S (or a prompt set's mean reward) on the held-out eval prompts")
    e.add_argument("--model", required=True, help=MODEL_HELP)
    e.add_argument("--prompts", default="geneval-s", help="prompt set: geneval-s (the verifier: GenEval's rules "
                   "and the exact reading), text, animals, "
                   "file:PATH")
    e.add_argument("--reward", default=None, help="score by this reward's mean instead of the verifier (a set without "
                   "one needs it: --prompts text --reward ocr); options as in model specs: "
                   "'ocr?psm=8&preprocess=otsu-crop'")
    e.add_argument("--judge", action="append", default=[], metavar="REWARD",
                   help="also score the same images by this reward, per category (repeatable): e.g. geneval_s_learned")
    e.add_argument("--per-category", type=int, default=50)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--split", choices=("held-out", "train"), default="held-out",
                   help="the prompts: held-out (the benchmark) or train (how much of a gain is memorised)")
    e.add_argument("--out", default=None, help="eval.json")
    e.set_defaults(fn=cmd_eval)

    r = sub.add_parser("train", help="RL fine-tuning from a recipe")
    r.add_argument("recipe")
    r.add_argument("overrides", nargs="*", help="key=value, e.g. train.iterations=10 algorithm_options.kl_beta=0.01")
    r.add_argument("--out", required=True, help="run folder")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    r.set_defaults(fn=cmd_train)

    d = sub.add_parser("diagnose", help="measure the gradient signal share of a training recipe before a long run")
    d.add_argument("recipe")
    d.add_argument("overrides", nargs="*", help="key=value, as for train")
    d.add_argument("--batches", type=int, default=4, help="independent rollout batches to compare (>= 2)")
    d.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    d.set_defaults(fn=cmd_diagnose)

    rp = sub.add_parser("report", help="write RUN/report.html")
    rp.add_argument("run")
    rp.set_defaults(fn=cmd_report)

    x = sub.add_parser("export", help="export a run's weights: diffusers LoRA or a merged model")
    x.add_argument("run")
    x.add_argument("--format", required=True, help="diffusers-lora | merged")
    x.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    x.set_defaults(fn=cmd_export)

    mp = sub.add_parser("make-pairs", help="sample a preference-pairs dataset (for diffusion_dpo) ranked by a reward")
    mp.add_argument("--model", required=True, help=MODEL_HELP)
    mp.add_argument("--reward", default="geneval_s")
    mp.add_argument("--reward-option", action="append", default=[], help="key=value, repeatable")
    mp.add_argument("--prompts", default="geneval-s", help="prompt set; its train prompts, categories in turn")
    mp.add_argument("--n-prompts", type=int, default=200)
    mp.add_argument("--per-prompt", type=int, default=4, help="samples per prompt; the i-th best vs the i-th worst")
    mp.add_argument("--seed", type=int, default=0)
    mp.add_argument("--out", required=True, help="dataset folder (must not exist)")
    mp.set_defaults(fn=cmd_make_pairs)

    c = sub.add_parser("compare", help="several algorithms on one model, prompt set and budget: table + curves")
    c.add_argument("algorithms", nargs="+", help="e.g. grpo ddpo nft diffusion_dpo online_dpo refl grpo:kl_beta=0.04")
    c.add_argument("--budget-nfe", type=int, default=0, help="network evaluations of training per algorithm")
    c.add_argument("--budget-minutes", type=float, default=0.0, help="or: training wall minutes per algorithm")
    c.add_argument("--budget-recipe", action="store_true",
                   help="or: each recipe's own iterations and evaluation points (--evals is then unused)")
    c.add_argument("--model", default="builtin:shapes-flow")
    c.add_argument("--pair-prompts", type=int, default=400,
                   help="diffusion_dpo's pairs: train prompts sampled 4 times each, best vs worst (default 400)")
    c.add_argument("--prompts", default="geneval-s", help="geneval-s, or geneval-s:CAT,CAT,CAT to hold categories out")
    c.add_argument("--evals", type=int, default=4, help="held-out evaluations along each run")
    c.add_argument("--per-category", type=int, default=50)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--set", action="append", default=[], help="key=value applied to every recipe, repeatable")
    c.add_argument("--out", default="runs/compare")
    c.set_defaults(fn=cmd_compare)

    sr = sub.add_parser("serve-reward", help="serve a reward over HTTP (JSON + PNG) for the `remote` reward")
    sr.add_argument("name", help="a registered reward (see `visalign list`)")
    sr.add_argument("--port", type=int, required=True)
    sr.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    sr.add_argument("--device", default="cpu", help="where the reward's networks run, e.g. cuda")
    sr.add_argument("--option", action="append", default=[], help="reward option key=value, repeatable")
    sr.set_defaults(fn=cmd_serve_reward)

    t = sub.add_parser("pretrain", help="pretrain a built-in model from a recipe")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*", help="key=value, e.g. train.steps=100")
    t.add_argument("--out", required=True)
    t.set_defaults(fn=cmd_pretrain)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The parsed command line; key=value overrides may also come after the options (`train R --out D k=v`):
    argparse stops a positional list at the first option and would call the rest unrecognised."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    from .algorithms import CapabilityError
    from .config import ConfigError
    from .models.builtin import CheckpointError
    from .registry import RegistryError
    from .rewards.server import RemoteRewardError
    from .trainer.checkpoint import ResumeError
    from .trainer.trainer import TrainingStopped
    from .world.grammar import PromptError

    if "VISALIGN_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["VISALIGN_THREADS"]))
    args = parse_args(argv)
    try:
        args.fn(args)
    except (PromptError, ConfigError, CheckpointError, RegistryError, ResumeError, CapabilityError, TrainingStopped,
            RemoteRewardError, ValueError, FileNotFoundError) as e:
        print(f"visalign {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
