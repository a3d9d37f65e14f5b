"""`visalign report RUN` (visalign/report.py): titles after the run's prompt set and reward, per-category curves,
numbers with enough digits to differ, sample grids with labelled rows and the evals files' verdicts, the recipe
and versions, and timing shares that add up to 100%. Mostly on run folders written here (metrics.jsonl,
recipe.json, samples, evals: what the trainer writes), and once on a tiny real run."""

import html
import json
import re
from decimal import Decimal

import numpy as np
import pytest

from visalign.cli import main
from visalign.images import save_grid
from visalign.report import distinct_digits, nice_ticks, tick_labels, write_report
from visalign.testbed.world.vocab import CATEGORIES

TIMES = {"time_rollout_s": 3.2104, "time_reward_s": 0.5123, "time_advantages_s": 0.0101, "time_update_s": 5.4321,
         "time_model_s": 7.5}


def _fake_run(run, prompts="geneval-s", reward="geneval_s", options=None, overall=(0.503, 0.507), k=3,
              versions=None):
    """A run folder as the trainer leaves it: evaluations at iterations 0 and 2 (k images a category, the grid
    shows them all), one training iteration between them."""
    verifier = prompts.startswith("geneval-s")
    cats = list(CATEGORIES) if verifier else [prompts]
    rng = np.random.default_rng(0)
    run.mkdir(parents=True)
    (run / "recipe.json").write_text(json.dumps({
        "name": f"test-{prompts}", "description": "a fake run", "model": "builtin:shapes-flow", "prompts": prompts,
        "reward": reward, "reward_options": options or {}, "algorithm": "grpo", "algorithm_options": {"kl_beta": 0.0},
        "train": {"iterations": 2, "batch_size": 8, "lr": 3e-4, "eval_per_category": k}}))
    if versions:
        (run / "versions.json").write_text(json.dumps(versions))
    item_prompts = [f"{c} prompt {i}" for c in cats for i in range(k)]
    rows = []
    for it, score in zip((0, 2), overall):
        series = {"reward": rng.random(len(item_prompts)).round(4).tolist()}
        rec = {"iteration": it, "eval_overall": score, "eval_diversity": 0.1 + it / 100}
        rec["eval_categories"] = {c: score + 0.01 * j for j, c in enumerate(cats)}
        if verifier:
            rules = (rng.random(len(item_prompts)) < 0.5).astype(float)
            exact = rules * (rng.random(len(item_prompts)) < 0.7)
            extra = (rules - exact) * 2
            series.update({"geneval_rules": rules.tolist(), "exact": exact.tolist(), "extra": extra.tolist(),
                           "lenient": (rules - exact).tolist(),
                           "geneval_s_learned": rng.random(len(item_prompts)).tolist()})
            rec.update({"eval_exact": score - 0.05, "eval_extra": 0.2 + it / 10, "eval_reward": score - 0.05,
                        "eval_exact_categories": {c: v - 0.05 for c, v in rec["eval_categories"].items()},
                        "eval_extra_categories": {c: 0.1 * j + it / 10 for j, c in enumerate(cats)},
                        "eval_judges": {"geneval_s_learned": 0.4 + it / 100}})
        else:
            rec["eval_reward"] = score
        (run / "evals").mkdir(exist_ok=True)
        (run / "evals" / f"iter-{it:06d}.json").write_text(json.dumps({"iteration": it, "prompts": item_prompts,
                                                                       "series": series}))
        save_grid(rng.integers(0, 255, (len(item_prompts), 8, 8, 3), dtype=np.uint8),
                  run / "samples" / f"iter-{it:06d}.png", cols=k)
        rows.append(rec)
    (run / "samples" / "prompts.json").write_text(json.dumps(item_prompts))
    first = {"iteration": 0, "reward_mean": None, "loss": None, "nfe": 0, "wall_s": 0.0, **rows[0], "time_eval_s": 4.0}
    mid = {"iteration": 1, "reward_mean": 0.4, "reward_std": 0.1, "loss": 0.01, "nfe": 100, "wall_s": 10.0, **TIMES}
    last = {"iteration": 2, "reward_mean": 0.5, "reward_std": 0.1, "loss": 0.02, "nfe": 200, "wall_s": 20.0, **TIMES,
            **rows[1], "time_eval_s": 4.5}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (first, mid, last)))
    return run


def _figures(page):
    """{caption: figure html} of the report's charts."""
    figure = r"<figure class=chart[^>]*><figcaption[^>]*>(.*?)</figcaption>.*?</figure>"
    return {html.unescape(m.group(1)): m.group(0) for m in re.finditer(figure, page, re.DOTALL)}


def _tiles(page):
    """[(iteration, category, column, attributes, caption)] of the sample grid's images."""
    out = []
    tile = r"<td class=tile ([^>]*)><img [^>]*title=\"([^\"]*)\"[^>]*><div class=cap>(.*?)</div></td>"
    for m in re.finditer(tile, page):
        attrs = dict(re.findall(r'data-([a-z]+)="([^"]*)"', m.group(1)))
        out.append((int(attrs["iter"]), attrs["category"], int(attrs["col"]), attrs, m.group(2), m.group(3)))
    return out


def test_title_follows_the_prompt_set_and_reward(tmp_path):
    page = write_report(_fake_run(tmp_path / "g")).read_text()
    assert "<h2>Held-out GenEval-S</h2>" in page and "GenEval&#x27;s rules" in page and "exact reading" in page
    assert "training reward: geneval_s" in page and "judge geneval_s_learned" in page
    page = write_report(_fake_run(tmp_path / "a", prompts="animals", reward="compressibility",
                                  options={"quality": 90})).read_text()
    assert "<h2>Held-out prompts of animals: mean compressibility (quality=90) reward</h2>" in page
    assert "GenEval" not in page and "exact reading" not in page
    assert "prompts <b>animals</b>, reward <b>compressibility (quality=90)</b>" in page
    # a run on some GenEval-S categories is still evaluated on all six
    page = write_report(_fake_run(tmp_path / "s", prompts="geneval-s:counting,colors")).read_text()
    assert "<h2>Held-out GenEval-S (all six categories; trained on counting, colors only)</h2>" in page
    assert "<td>position (held out)</td>" in page and "<td>counting</td>" in page


def test_per_category_curves(tmp_path):
    figs = _figures(write_report(_fake_run(tmp_path / "g")).read_text())
    for caption in ("per category: GenEval's rules", "per category: exact reading",
                    "per category: extra objects per image (lower is better)"):
        fig = figs[caption]
        assert fig.count("<polyline") == len(CATEGORIES)
        legend = re.search(r"<div class=legend.*?</div>", fig, re.DOTALL).group(0)
        assert re.findall(r"</svg>([a-z_]+)</span>", legend) == list(CATEGORIES)
    # one category (animals): its curve is the overall one, no per-category chart
    figs = _figures(write_report(_fake_run(tmp_path / "a", prompts="animals", reward="compressibility")).read_text())
    assert not [c for c in figs if c.startswith("per category")]
    assert "mean compressibility reward on the held-out prompts" in figs


@pytest.mark.parametrize("before,after,shown", [(0.503, 0.507, ("0.503", "0.507", "+0.004")),
                                                (0.5031, 0.5034, ("0.5031", "0.5034", "+0.0003"))])
def test_numbers_have_digits_enough_to_differ(tmp_path, before, after, shown):
    page = write_report(_fake_run(tmp_path / "g", overall=(before, after))).read_text()
    overall = re.search(r"<tr><th>overall</th>(.*?)</tr>", page).group(1)
    assert re.findall(r"<th>([^<]*)</th>", overall)[:3] == list(shown)
    # chart ticks: round numbers whose labels all differ, the held-out axis spanning 0.503 ... 0.507 included
    for fig in _figures(page).values():
        for axis in ("ytick", "xtick"):
            labels = re.findall(rf'<text class="{axis}"[^>]*>([^<]*)</text>', fig)
            assert len(labels) == len(set(labels)) >= 2, (axis, labels)
    assert distinct_digits([[0.503, 0.507]], 0) == 2 and distinct_digits([[0.5031, 0.5034]]) == 4
    assert distinct_digits([[0.5, 0.5]]) == 3
    ticks, d = nice_ticks(0.503, 0.507)
    assert tick_labels(ticks, d) == ["0.503", "0.504", "0.505", "0.506", "0.507"]
    assert tick_labels(*nice_ticks(0, 3_520_000)) == ["0", "1M", "2M", "3M", "4M"]


def test_grid_rows_labelled_and_marks_match_the_evals_files(tmp_path):
    run = _fake_run(tmp_path / "g")
    page = write_report(run).read_text()
    rows = re.findall(r"<th class=cat rowspan=3>([a-z_]+)<br>", page)
    assert rows == list(CATEGORIES)
    prompts = json.loads((run / "samples" / "prompts.json").read_text())
    tiles = _tiles(page)
    assert len(tiles) == 2 * len(prompts)  # base and final
    for it, cat, col, attrs, title, cap in tiles:
        idx = CATEGORIES.index(cat) * 3 + col
        series = json.loads((run / "evals" / f"iter-{it:06d}.json").read_text())["series"]
        assert title.startswith(prompts[idx]) and f"geneval_s_learned: {series['geneval_s_learned'][idx]:.6g}" in title
        assert attrs["rules"] == str(int(series["geneval_rules"][idx]))
        assert attrs["exact"] == str(int(series["exact"][idx]))
        marks = re.findall(r"class=(ok|no)>", cap)
        assert marks == ["ok" if series[k][idx] else "no" for k in ("geneval_rules", "exact")]
        assert ("+2" in cap) == bool(series["extra"][idx])
    assert {t[0] for t in tiles} == {0, 2} and "base<br>iter 0" in page and "final<br>iter 2" in page
    # a set without a verifier: each image's reward
    run = _fake_run(tmp_path / "a", prompts="animals", reward="compressibility")
    page = write_report(run).read_text()
    assert re.findall(r"<th class=cat rowspan=3>([a-z_]+)<br>", page) == ["animals"]
    caps = {}
    for it, _, col, attrs, _, cap in _tiles(page):
        reward = json.loads((run / "evals" / f"iter-{it:06d}.json").read_text())["series"]["reward"][col]
        assert float(attrs["reward"]) == pytest.approx(reward) and float(cap) == pytest.approx(reward, abs=5e-4)
        caps.setdefault(it, {})[cap] = reward
    assert all(len(set(c.values())) == len(c) == 3 for c in caps.values())  # different rewards read differently
    # an evals file whose items are not the grid's: no verdicts rather than wrong ones
    data = json.loads((run / "evals" / "iter-000002.json").read_text())
    rotated = data["prompts"][1:] + data["prompts"][:1]
    (run / "evals" / "iter-000002.json").write_text(json.dumps({**data, "prompts": rotated}))
    tiles = _tiles(write_report(run).read_text())
    assert all("reward" not in a for it, _, _, a, _, _ in tiles if it == 2)
    assert all("reward" in a for it, _, _, a, _, _ in tiles if it == 0)


def test_recipe_and_versions(tmp_path):
    versions = {"python": "3.11.2", "torch": "2.13.0+cpu", "diffusers": "0.36.0", "transformers": "4.57.1",
                "peft": "0.17.1", "accelerate": "1.11.0", "visalign": "0.1.0"}
    page = write_report(_fake_run(tmp_path / "g", versions=versions)).read_text()
    section = page[page.index("<h2>Hyperparameters and versions</h2>"):]
    for name, v in versions.items():
        assert f"<tr><td>{name}</td><td>{v}</td></tr>" in section
    assert "<tr><td>train.lr</td><td>0.0003</td></tr>" in section
    assert "<tr><td>algorithm_options.kl_beta</td><td>0.0</td></tr>" in section
    page = write_report(_fake_run(tmp_path / "old")).read_text()  # a run made before versions were recorded
    assert "<h3>Versions (not recorded" in page and "<tr><td>torch</td><td>not recorded</td></tr>" in page


def _shares(page, cls):
    table = re.search(rf"<table class='data {cls}'>(.*?)</table>", page, re.DOTALL).group(1)
    return {name: Decimal(v) for name, v in re.findall(r"<tr><td>([^<]*)(?:<small>[^<]*</small>)?</td><td>[^<]*</td>"
                                                       r"<td class=share>([0-9.]+)%</td></tr>", table)}


def test_timing_shares_add_up_to_100_percent(tmp_path):
    page = write_report(_fake_run(tmp_path / "g")).read_text()
    shares = _shares(page, "timing")
    assert set(shares) == {"rollout", "reward", "advantages", "update", "other"} and sum(shares.values()) == 100
    named = 2 * sum(v for k, v in TIMES.items() if k != "time_model_s")
    assert shares["other"] == Decimal(f"{100 * (20 - named) / 20:.1f}")  # what no stage timed
    assert "model" not in shares and "15.0 s (75.0%) were spent in the network" in page  # inside the stages
    both = _shares(page, "timing-all")  # the evaluations apart (not training wall time)
    assert sum(both.values()) == 100 and both["training"] == Decimal("70.2")


@pytest.mark.parametrize("own_prompts", [False, True], ids=["geneval-s", "compressibility"])
def test_report_of_a_tiny_run(tiny_flow_model, tmp_path, own_prompts):
    """What `visalign train` writes (versions.json, evals, grids) is what the report reads: on GenEval-S, and
    with a prompt file (words the tiny model knows) and the compressibility reward."""
    tiny_flow_model.save_pretrained(tmp_path / "tiny")
    (tmp_path / "shapes.txt").write_text("a red circle\na blue square\na green star\na triangle\n")
    extra = [f"prompts=file:{tmp_path / 'shapes.txt'}", "reward=compressibility"] if own_prompts else []
    run = tmp_path / "r"
    over = [f"model={tmp_path / 'tiny'}", "train.batch_size=4", "train.group_size=2", "train.eval_per_category=2",
            "sampling.steps=2", "train.iterations=1", "train.eval_every=1", "train.checkpoint_every=1",
            "train.lora_rank=2", *extra]
    assert main(["train", "geneval-s-grpo", *over, "--out", str(run)]) == 0
    versions = json.loads((run / "versions.json").read_text())
    assert set(versions) == {"python", "torch", "diffusers", "transformers", "peft", "accelerate", "visalign"}
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert f"<tr><td>torch</td><td>{versions['torch']}</td></tr>" in page
    assert sum(_shares(page, "timing").values()) == 100
    tiles = _tiles(page)
    cats = ["shapes"] if own_prompts else list(CATEGORIES)
    assert len(tiles) == 2 * len(cats) * 2
    for it, cat, col, attrs, _, _ in tiles:
        series = json.loads((run / "evals" / f"iter-{it:06d}.json").read_text())["series"]
        idx = cats.index(cat) * 2 + col
        if own_prompts:
            assert float(attrs["reward"]) == pytest.approx(series["reward"][idx], rel=1e-5)
        else:
            assert attrs["rules"] == str(int(series["geneval_rules"][idx]))
            assert attrs["exact"] == str(int(series["exact"][idx]))
    if own_prompts:
        assert f"<h2>Held-out prompts of file:{tmp_path / 'shapes.txt'}: mean compressibility reward</h2>" in page
        changed = re.search(r"this run changed: ([^<]*)\]</p>", page).group(1)
        assert "prompts &quot;file:" in changed
        assert "reward &quot;compressibility&quot; (recipe: &quot;geneval_s" in changed
    else:
        assert "<h2>Held-out GenEval-S</h2>" in page
