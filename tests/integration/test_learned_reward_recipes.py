"""The learned-reward GPU recipes run end to end on tiny local stand-ins: a tiny diffusers pipeline
(models/tiny_diffusers.py) and tiny reward checkpoints written here in the published layouts (a CLIPModel
folder with tokenizer and preprocessor config; the aesthetic MLP .pth). Nothing is downloaded: every reward
is loaded with local_files_only=true."""

import json

import pytest
import torch

from visalign.cli import main
from visalign.models.tiny_diffusers import clip_tokenizer, save_tiny_pipeline


def tiny_clip_dir(path, projection=24):
    from transformers import CLIPConfig, CLIPModel

    tok = clip_tokenizer()
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                                      vocab_size=len(tok), max_position_embeddings=77, eos_token_id=tok.eos_token_id),
                     vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                                        image_size=16, patch_size=4), projection_dim=projection)
    CLIPModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"crop_size": {"height": 16, "width": 16}}))
    return path


FAST = ["sampling.steps=3", "eval.steps=3", "train.batch_size=8", "train.group_size=4", "train.iterations=2",
        "train.eval_every=2", "train.eval_per_category=2", "train.checkpoint_every=2", "train.micro_batch=4",
        "reward_options.local_files_only=true"]


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sd3_pickscore_grpo_recipe_on_tiny_stand_ins(tmp_path):
    save_tiny_pipeline("sd3", tmp_path / "sd3")
    clip = tiny_clip_dir(tmp_path / "pickscore")
    run = tmp_path / "run"
    assert main(["train", "sd3-pickscore-grpo", f"model=diffusers:{tmp_path / 'sd3'}", f"reward_options.model={clip}",
                 f"reward_options.processor={clip}", "train.lora_rank=2", "train.lora_alpha=2.0",
                 # the tiny SD3 has one (context-pre-only) block, so no to_add_out, which SD3.5's other blocks have
                 "train.lora_targets=[to_q, to_k, to_v, to_out.0, add_q_proj, add_k_proj, add_v_proj]", *FAST,
                 "--out", str(run)]) == 0
    rows = _rows(run)
    assert all(torch.isfinite(torch.tensor(r["reward_mean"])) for r in rows[1:])
    assert all(r["loss"] is not None for r in rows[1:]) and "eval_overall" in rows[-1]
    assert (run / "report.html").exists()


@pytest.mark.parametrize("recipe", ["sd-aesthetic-ddpo"])
def test_sd_aesthetic_ddpo_recipe_on_tiny_stand_ins(tmp_path, recipe):
    from visalign.rewards.converters import MLPHead

    save_tiny_pipeline("sd15", tmp_path / "sd")
    clip = tiny_clip_dir(tmp_path / "clip")
    torch.save(MLPHead(24).state_dict(), tmp_path / "head.pth")
    run = tmp_path / "run"
    assert main(["train", recipe, f"model=diffusers:{tmp_path / 'sd'}", f"reward_options.clip={clip}",
                 f"reward_options.predictor={tmp_path / 'head.pth'}", "train.group_size=1",
                 "algorithm_options.stat_min_count=2", *[o for o in FAST if "group_size" not in o],
                 "--out", str(run)]) == 0
    rows = _rows(run)
    assert len(rows) == 3 and all(r["loss"] is not None for r in rows[1:])


def test_flux_clipscore_grpo_recipe_on_tiny_stand_ins(tmp_path):
    save_tiny_pipeline("flux", tmp_path / "flux")
    clip = tiny_clip_dir(tmp_path / "clip")
    run = tmp_path / "run"
    assert main(["train", "flux-clipscore-grpo", f"model=diffusers:{tmp_path / 'flux'}?resolution=32",
                 f"reward_options.model={clip}", "train.lora_rank=2", "train.lora_alpha=2.0", *FAST,
                 "--out", str(run)]) == 0
    rows = _rows(run)
    assert all(-100 <= r["reward_mean"] <= 100 and r["loss"] is not None for r in rows[1:])
