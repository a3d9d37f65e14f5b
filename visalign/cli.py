"""`visalign list|sample|eval|pretrain ...`. Every error the user can cause ends as one line on stderr
and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_grid(images: np.ndarray, path: Path, cols: int, scale: int = 4) -> None:
    """uint8 [N, H, W, 3] -> one PNG, `cols` per row, upscaled `scale` x (nearest) with 2 px gaps."""
    import io

    from PIL import Image

    n, h, w, _ = images.shape
    rows = (n + cols - 1) // cols
    gap = 2
    canvas = np.full((rows * (h * scale + gap) + gap, cols * (w * scale + gap) + gap, 3), 80, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        big = img.repeat(scale, 0).repeat(scale, 1)
        y, x = gap + r * (h * scale + gap), gap + c * (w * scale + gap)
        canvas[y : y + h * scale, x : x + w * scale] = big
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    _atomic_write(path, buf.getvalue())


def cmd_list(args) -> None:
    from .config import recipe_names
    from .models.registry import MODELS

    print("models:")
    for name in MODELS.names():
        print(f"  {name:<22} {MODELS.doc(name)}")
    print("recipes:")
    for name in recipe_names():
        print(f"  {name}")


def cmd_sample(args) -> None:
    from .models.registry import load_generator
    from .world.grammar import parse_prompt

    for p in args.prompt:
        parse_prompt(p)
    gen = load_generator(args.model)
    prompts = [p for p in args.prompt for _ in range(args.n)]
    seeds = [args.seed * 1_000_000 + i for i in range(len(prompts))]
    images = gen.generate(prompts, seeds)
    save_grid(images, Path(args.out), cols=args.n)
    print(f"wrote {len(images)} images ({len(args.prompt)} prompts x {args.n}) to {args.out}")


def cmd_eval(args) -> None:
    from .evaluate import evaluate, format_table
    from .models.registry import load_generator

    gen = load_generator(args.model)
    start = time.time()
    result = evaluate(gen, args.per_category, args.seed)
    result["seconds"] = round(time.time() - start, 2)
    result["model"] = args.model
    print(format_table(result))
    print(f"{result['n']} images in {result['seconds']:.1f} s")
    if args.out:
        _atomic_write(Path(args.out), json.dumps(result, indent=2).encode())
        print(f"wrote {args.out}")


def cmd_pretrain(args) -> None:
    from .config import PretrainRecipe, apply_overrides, build, load_recipe_dict
    from .models.builtin import ShapesModelConfig
    from .trainer.pretrain import pretrain

    data = apply_overrides(load_recipe_dict(args.recipe), args.overrides)
    if data.get("kind") != "pretrain":
        raise ValueError(f"recipe '{args.recipe}' is not a pretraining recipe (kind: {data.get('kind')})")
    data.pop("kind")
    recipe = build(PretrainRecipe, data)
    model_cfg = ShapesModelConfig.from_dict(recipe.model)
    start = time.time()
    pretrain(model_cfg, recipe.train, args.out)
    print(f"pretrained in {(time.time() - start) / 60:.1f} min; model written to {args.out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="visalign", description="RL fine-tuning of visual generative models")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="models, recipes").set_defaults(fn=cmd_list)

    s = sub.add_parser("sample", help="sample a grid of images")
    s.add_argument("--model", required=True)
    s.add_argument("--prompt", required=True, action="append", help="repeat for several rows")
    s.add_argument("--n", type=int, default=8, help="images per prompt")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="grid.png")
    s.set_defaults(fn=cmd_sample)

    e = sub.add_parser("eval", help="GenEval-S on the held-out eval prompts")
    e.add_argument("--model", required=True)
    e.add_argument("--per-category", type=int, default=50)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default=None, help="eval.json")
    e.set_defaults(fn=cmd_eval)

    t = sub.add_parser("pretrain", help="pretrain a built-in model from a recipe")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*", help="key=value, e.g. train.steps=100")
    t.add_argument("--out", required=True)
    t.set_defaults(fn=cmd_pretrain)
    return p


def main(argv: list[str] | None = None) -> int:
    import torch

    from .config import ConfigError
    from .models.builtin import CheckpointError
    from .registry import RegistryError
    from .world.grammar import PromptError

    if "VISALIGN_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["VISALIGN_THREADS"]))
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (PromptError, ConfigError, CheckpointError, RegistryError, ValueError, FileNotFoundError) as e:
        print(f"visalign {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
