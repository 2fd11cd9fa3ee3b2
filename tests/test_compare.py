"""compare and report on a small real sweep: the aggregates against a hand computation,
every output format parsed back, figures written, crashed and unfinished runs tolerated."""
import io
import json
import math
import statistics

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import normbench
from normbench.sweep import store
from normbench.cli.app import app
from normbench.analysis.compare import aggregate, compare
from normbench.errors import NormbenchError
from conftest import TOO_BIG_D_FF, tiny

runner = CliRunner()
LRS = (0.003, 5.0)  # 5.0 diverges within a few steps on every seed; 0.003 never does


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """placement (pre, post) x lr (0.003, 5.0) x 2 seeds of the tiny model: 8 real runs."""
    out = tmp_path_factory.mktemp("cmp") / "results"
    recipe = {"name": "lrs", "base": tiny(train={"steps": 12}),
              "sweep": {"grid": {"model.placement": ["pre", "post"], "train.lr": list(LRS)}, "seeds": 2}}
    df = normbench.run_recipe(recipe, out=out, jobs=2, threads=1)
    assert (df["status"] != "crashed").all()
    return out, df


def runs_of(df, placement=None, lr=None, seed=None):
    sel = df
    if placement is not None:
        sel = sel[sel["model.placement"] == placement]
    if lr is not None:
        sel = sel[sel["train.lr"] == lr]
    if seed is not None:
        sel = sel[sel["seed"] == seed]
    return sel


def test_the_sweep_has_diverged_and_finished_runs(sweep):
    _, df = sweep
    assert df.loc[df["train.lr"] == 5.0, "diverged"].all()
    assert not df.loc[df["train.lr"] == 0.003, "diverged"].any()


def test_group_means_stds_and_diverged_rate_equal_a_hand_computation(sweep):
    out, df = sweep
    c = compare([out])
    assert c.by == ["model.placement", "train.lr"]  # detected: the keys that vary (seed is aggregated over)
    assert len(c.table) == 4
    for _, row in c.table.iterrows():
        runs = runs_of(df, row["model.placement"], row["train.lr"])
        assert row["n"] == 2
        ok = runs[~runs["diverged"].astype(bool)]
        assert row["diverged_rate"] == (len(runs) - len(ok)) / len(runs)
        if row["train.lr"] == 5.0:  # every seed diverged: no numbers, never a mean of garbage
            assert row["diverged_rate"] == 1.0 and math.isnan(row["final_val_loss_mean"])
            continue
        for m in ("final_val_loss", "best_val_loss", "max_grad_norm", "tokens_per_s", "loss_spikes"):
            vals = [float(v) for v in ok[m]]
            assert row[f"{m}_mean"] == pytest.approx(statistics.mean(vals), rel=1e-12)
            assert row[f"{m}_std"] == pytest.approx(statistics.stdev(vals), rel=1e-12, abs=1e-15)
    # ranked best first, fully diverged groups last
    means = c.table["final_val_loss_mean"].tolist()
    assert means[:2] == sorted(means[:2]) and all(math.isnan(m) for m in means[2:])
    assert c.best == 0


def test_groups_with_a_diverged_seed_rank_below_groups_without():
    nan = math.nan
    runs = pd.DataFrame({"model.norm": ["rmsnorm", "rmsnorm", "layernorm", "layernorm", "dyt", "dyt"],
                         "diverged": [True, False, False, False, True, True],
                         "final_val_loss": [nan, 2.0, 2.6, 2.4, nan, nan]})
    table = aggregate(runs, ["model.norm"], ["final_val_loss"], "final_val_loss")
    assert table["model.norm"].tolist() == ["layernorm", "rmsnorm", "dyt"]
    assert table["diverged_rate"].tolist() == [0.0, 0.5, 1.0]
    assert table["final_val_loss_mean"].tolist()[:2] == [pytest.approx(2.5), 2.0]  # 2.0: the surviving seed
    tps = aggregate(runs.assign(tokens_per_s=[1, 5, 3, 4, 9, 9]), ["model.norm"], ["tokens_per_s"], "tokens_per_s")
    assert tps["model.norm"].tolist() == ["layernorm", "rmsnorm", "dyt"]  # higher is better, still reliable first


def test_pooled_groups_count_diverged_runs_but_do_not_average_them(sweep):
    out, df = sweep
    c = compare([out], by="model.placement", pool=True)
    assert any("pooled over train.lr" in n for n in c.notes)
    for _, row in c.table.iterrows():
        runs = runs_of(df, row["model.placement"])
        ok = runs[~runs["diverged"].astype(bool)]
        assert (row["n"], row["n_diverged"], row["diverged_rate"]) == (4, 2, 0.5)
        assert row["final_val_loss_mean"] == pytest.approx(statistics.mean(ok["final_val_loss"]), rel=1e-12)


def test_lr_sensitivity_is_wortsmans_formula(sweep):
    """Per seed: the mean over the rates of min(loss, the run's loss at step 1) minus its minimum, a
    diverged run at its cap; the table gives the mean over seeds (the one number everywhere)."""
    out, df = sweep
    c = compare([out])
    assert c.sensitivity is not None and len(c.sensitivity) == 2
    for _, row in c.sensitivity.iterrows():
        runs = runs_of(df, row["model.placement"])
        per_seed = []
        for seed in sorted(set(runs["seed"])):
            curve = {}
            for lr in LRS:
                r = runs_of(runs_of(runs, lr=lr), seed=seed).iloc[0]
                cap = r["initial_loss"]  # the loss at initialisation (Wortsman et al.'s cap), not ln V
                curve[lr] = cap if r["diverged"] else min(float(r["final_val_loss"]), cap)
            per_seed.append(statistics.mean(curve.values()) - min(curve.values()))
        assert row["lr_sensitivity"] == pytest.approx(statistics.mean(per_seed), rel=1e-12)
        assert row["best_lr"] == 0.003 and row["lrs"] == 2 and row["seeds"] == len(per_seed)
    # and every row of the main table carries its combination's sensitivity
    for _, row in c.table.iterrows():
        sens = c.sensitivity.set_index("model.placement").loc[row["model.placement"], "lr_sensitivity"]
        assert row["lr_sensitivity"] == sens


def test_csv_json_markdown_and_table_parse_back(sweep, tmp_path):
    out, _ = sweep
    c = compare([out])
    res = runner.invoke(app, ["compare", str(out), "--format", "csv"])
    assert res.exit_code == 0, res.output
    csv = pd.read_csv(io.StringIO(res.stdout))
    for col in ("model.placement", "train.lr", "n", "diverged_rate", "final_val_loss_mean", "final_val_loss_std",
                "max_attn_logit_mean", "tokens_per_s_std", "lr_sensitivity"):
        assert col in csv.columns
    pd.testing.assert_series_equal(csv["final_val_loss_mean"], c.table["final_val_loss_mean"], check_names=False)

    target = tmp_path / "cmp.json"
    res = runner.invoke(app, ["compare", str(out), "--output", str(target)])  # format from the suffix
    assert res.exit_code == 0, res.output
    doc = json.loads(target.read_text())
    assert doc["by"] == ["model.placement", "train.lr"] and doc["metric"] == "final_val_loss"
    assert len(doc["rows"]) == 4 and doc["rows"][0]["final_val_loss_mean"] == c.table["final_val_loss_mean"][0]
    assert doc["rows"][-1]["final_val_loss_mean"] is None and doc["rows"][-1]["diverged_rate"] == 1.0
    assert {r["model.placement"] for r in doc["lr_sensitivity"]} == {"pre", "post"}

    res = runner.invoke(app, ["compare", str(out), "--format", "markdown"])
    lines = res.stdout.splitlines()
    assert lines[0].startswith("| placement | lr | n | diverged | vs best | final val")
    assert lines[2].startswith("| **")  # best row in bold
    # the header, and the two losses of the two fully diverged groups; their stability measures are numbers
    assert sum(line.count("diverged") for line in lines if line.startswith("| ")) == 1 + 2 * 2

    res = runner.invoke(app, ["compare", str(out), "--metric", "max_grad_norm"])
    assert res.exit_code == 0
    assert "Ranked by the share of diverged runs, then by max_grad_norm (lower is better)" in " ".join(res.stdout.split())
    assert "2/2" in res.stdout and "diverged" in res.stdout


def test_filter_selects_runs_and_numbers_compare_as_numbers(sweep):
    out, df = sweep
    c = compare([out], filters=["train.lr=3e-3", "model.placement=pre,post"])
    # the factors of the whole set name the rows, though lr has one value left
    assert c.by == ["model.placement", "train.lr"] and len(c.runs) == 4 and not c.runs["diverged"].any()
    res = runner.invoke(app, ["compare", str(out), "--filter", "model.placement=sandwich"])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        "normbench: error: --filter: model.placement=sandwich matches none of the 8 runs "
        "(model.placement has: post, pre)"]


@pytest.mark.parametrize("args,message", [
    (["--metric", "final_loss"], "--metric: unknown metric 'final_loss'"),
    (["--by", "model.nrom"], "--by: unknown key 'model.nrom' (did you mean model.norm?)"),
    (["--by", "model.placement"], "--by: the runs differ in keys --by leaves out: train.lr (0.003, 5); averaging "
                                  "them would mix different experiments. Add them to --by (--by placement,lr), keep one "
                                  "value (--filter lr=0.003), or pass --pool"),
    (["--metric", "tokens_per_s"], "--metric: tokens_per_s is not a ranking metric"),
    (["--filter", "model.norm"], "--filter: expected KEY=VALUE"),
    (["--filter", "model.nrm=x"], "--filter: unknown key 'model.nrm' (did you mean model.norm?)"),
    (["--format", "xml"], "--format: expected one of table, csv, markdown, json"),
    (["--plot", "curves.txt"], "--plot: expected a .png, .pdf or .svg file name"),
])
def test_bad_compare_input_is_one_line_exit_2(sweep, args, message):
    out, _ = sweep
    res = runner.invoke(app, ["compare", str(out), *args])
    assert res.exit_code == 2
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"normbench: error: {message}")


def test_missing_or_empty_folders_are_one_line_exit_2(tmp_path):
    res = runner.invoke(app, ["compare", str(tmp_path / "nope")])
    assert res.exit_code == 2 and res.stderr.strip() == f"normbench: error: {tmp_path / 'nope'}: no such results folder"
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["compare", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "holds no run folders" in res.stderr
    res = runner.invoke(app, ["report", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "holds no run folders" in res.stderr


def test_report_writes_markdown_and_figures(sweep):
    out, df = sweep
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    text = (out / "report.md").read_text()
    for fig in ("curves.png", "grad_norm_init.png", "lr_sensitivity.png"):
        png = (out / "figures" / fig).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        assert f"](figures/{fig})" in text
    for heading in ("## Comparison", "## Learning-rate sensitivity", "## Training curves",
                    "## Gradient norm per layer at initialisation", "## Diverged runs"):
        assert heading in text
    assert "and the model update ‖F(x, θ_t) − F(x, θ_0)‖" in text and "| max update |" in text
    import struct
    width, height = struct.unpack(">II", (out / "figures" / "curves.png").read_bytes()[16:24])
    assert height > 0.4 * width  # five panels in two rows of three (one row of three is about 0.3)
    diverged = df[df["diverged"].astype(bool)]
    assert len(diverged) == 4
    for _, r in diverged.iterrows():  # every diverged run listed with its step
        (line,) = [x for x in text.splitlines() if x.startswith(f"| {r['run_id']} |")]
        assert f"| {int(r['diverged_step'])} |" in line
    # without an lr sweep the lr figure disappears rather than going stale
    res = runner.invoke(app, ["report", str(out), "--filter", "train.lr=0.003"])
    assert res.exit_code == 0
    assert not (out / "figures" / "lr_sensitivity.png").exists()
    assert "## Diverged runs\n\nNone." in (out / "report.md").read_text()


def test_compare_plot_draws_curves(sweep, tmp_path):
    out, _ = sweep
    res = runner.invoke(app, ["compare", str(out), "--plot", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_crashed_and_unfinished_runs_are_noted_and_the_rest_compared(tmp_path, monkeypatch):
    recipe = {"name": "mixed", "base": tiny(train={"steps": 40, "lr": 3e-3, "eval_every": 40}),
              "sweep": {"grid": {"model.d_ff": [64, TOO_BIG_D_FF]}, "seeds": 2}}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "results"
    df = normbench.run_recipe(p, out=out, jobs=2, threads=1)
    assert sorted(df["status"]) == ["completed", "completed", "crashed", "crashed"]
    # an interrupted run leaves a folder with its config.yaml and nothing else
    store.prepare(out / "mixed" / "0000000000", {"name": "mixed", "base": recipe["base"]})
    monkeypatch.chdir(tmp_path)  # default RESULTS: ./results
    res = runner.invoke(app, ["compare"])
    assert res.exit_code == 0, res.output
    notes = [line for line in res.stdout.splitlines() if line.startswith("note:")]
    assert sum("crashed" in n for n in notes) == 2
    assert any("1 run not finished" in n and "0000000000" in n for n in notes)
    c = compare([out])
    assert len(c.runs) == 2 and len(c.crashed) == 2 and len(c.table) == 1 and c.table["n"][0] == 2
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0 and "## Crashed runs" in (out / "report.md").read_text()


def test_the_same_run_in_two_folders_counts_once(sweep, tmp_path):
    import shutil

    out, _ = sweep
    shutil.copytree(out / "lrs", tmp_path / "copy" / "lrs")
    c = compare([out, tmp_path / "copy"])
    assert len(c.runs) == 8 and any("8 runs skipped" in n for n in c.notes)


def test_several_recipes_compare_one_table_each_ranked_within(sweep, tmp_path):
    """Two recipes in one results folder: keys that differ only between the recipes are not
    factors, and the table and markdown formats rank each recipe on its own."""
    out, df = sweep
    other = {"name": "widths", "base": tiny(model={"d_model": 48}, train={"steps": 12, "lr": 0.003}),
             "sweep": {"grid": {"model.norm": ["layernorm", "batchnorm"]}}}
    both = tmp_path / "results"
    normbench.run_recipe(other, out=both, jobs=2, threads=1)
    import shutil
    shutil.copytree(out / "lrs", both / "lrs")

    c = compare([both])
    # d_model differs between the recipes only, norm within one, placement and lr within the other
    assert c.by == ["recipe", "model.norm", "model.placement", "train.lr"]
    parts = c.per_recipe()
    assert [p.recipe for p in parts] == ["lrs", "widths"]
    lrs, widths = parts
    assert lrs.by == ["model.placement", "train.lr"] and widths.by == ["model.norm"]
    assert len(lrs.runs) == 8 and len(widths.runs) == 2 and widths.table["n"].tolist() == [1, 1]
    # the BatchNorm train/eval gap is a default column only where a run measured it
    assert "bn_eval_gap" in widths.metrics and "bn_eval_gap" not in lrs.metrics
    bn = widths.runs[widths.runs["model.norm"] == "batchnorm"].iloc[0]
    row = widths.table[widths.table["model.norm"] == "batchnorm"].iloc[0]
    assert row["bn_eval_gap_mean"] == pytest.approx(bn["final_val_loss"] - bn["final_val_loss_batch_stats"])
    assert math.isnan(widths.table[widths.table["model.norm"] == "layernorm"].iloc[0]["bn_eval_gap_mean"])
    # the same numbers as comparing the recipe's folder alone
    alone = compare([out])
    pd.testing.assert_frame_equal(lrs.table, alone.table)
    # a --by that names the factors gives one table, not one per recipe
    assert len(compare([both], by="recipe,model.norm", pool=True).per_recipe()) == 1

    res = runner.invoke(app, ["compare", str(both)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "compare lrs: 8 runs, grouped by model.placement, train.lr" in text
    assert "compare widths: 2 runs, grouped by model.norm" in text
    md = runner.invoke(app, ["compare", str(both), "--format", "markdown"]).stdout
    assert md.count("Ranked by") == 2 and "### widths: 2 runs, grouped by `model.norm`" in md
    # csv stays one flat table with the recipe column, for scripts
    flat = pd.read_csv(io.StringIO(runner.invoke(app, ["compare", str(both), "--format", "csv"]).stdout))
    assert sorted(set(flat["recipe"])) == ["lrs", "widths"] and flat["n"].sum() == 10
    assert "bn_eval_gap_mean" in flat.columns

    # report: one report per recipe in its own folder, and an index linking them
    res = runner.invoke(app, ["report", str(both), "--by", "recipe,model.norm", "--pool"])  # one combined report first
    assert res.exit_code == 0 and (both / "figures" / "curves.png").stat().st_size > 0
    res = runner.invoke(app, ["report", str(both)])
    assert res.exit_code == 0, res.output
    index = (both / "report.md").read_text()
    assert "[lrs](lrs/report.md)" in index and "[widths](widths/report.md)" in index
    assert "| [widths](widths/report.md) | 2 | 0 | `model.norm` |" in index
    assert "| [lrs](lrs/report.md) | 8 | 4 | `model.placement`, `train.lr` |" in index
    assert not (both / "figures" / "curves.png").exists()  # the index has no figures of its own
    for name in ("lrs", "widths"):
        text = (both / name / "report.md").read_text()
        assert text.startswith(f"# normbench report: {name}\n")
        assert f"regenerate with `normbench report {both / name}`" in text
        assert (both / name / "figures" / "curves.png").stat().st_size > 0
    # --plot: one figure per recipe, named after it
    res = runner.invoke(app, ["compare", str(both), "--plot", str(tmp_path / "cv.png")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.glob("cv*.png")) == ["cv_lrs.png", "cv_widths.png"]
    assert all(p.stat().st_size > 0 for p in tmp_path.glob("cv*.png"))



# --- what a new user hit (issue 12) -------------------------------------------------------------


def test_short_names_work_in_filter_and_by(sweep):
    out, _ = sweep
    c = compare([out], by="placement,lr", filters=["placement=pre", "lr=0.003"])
    assert c.by == ["model.placement", "train.lr"] and len(c.runs) == 2
    from normbench.analysis.compare import resolve_key, short_names

    with pytest.raises(NormbenchError, match="ambiguous: it could be a.x or b.x"):
        resolve_key("x", ["a.x", "b.x"], "--by")
    assert short_names(["model.norm", "train.lr", "model.qk_norm_type"]) == \
        {"model.norm": "norm", "train.lr": "lr", "model.qk_norm_type": "qk_norm_type"}


def test_a_filter_that_leaves_one_configuration_still_names_it(sweep):
    out, _ = sweep
    res = runner.invoke(app, ["compare", str(out), "--filter", "placement=post", "--filter", "lr=0.003"])
    assert res.exit_code == 0, res.stderr
    header = next(ln.split() for ln in res.output.splitlines() if ln.split()[:1] == ["placement"])
    assert header[:3] == ["placement", "lr", "n"]
    assert any(ln.split()[:3] == ["post", "0.003", "2"] for ln in res.output.splitlines())
    assert "grouped by model.placement, train.lr" in res.output


def test_factor_columns_are_never_cut_metric_columns_go_first(sweep):
    out, _ = sweep
    res = runner.invoke(app, ["compare", str(out)], env={"COLUMNS": "70"})
    assert res.exit_code == 0, res.stderr
    main = res.output.split("Ranked")[0]  # the comparison, not the LR-sensitivity table after it
    rows = [ln.split() for ln in main.splitlines() if ln.split()[:1] in (["pre"], ["post"])]
    assert sorted((r[0], r[1]) for r in rows) == [("post", "0.003"), ("post", "5"), ("pre", "0.003"), ("pre", "5")]
    assert "…" not in res.output.split("Ranked")[0]  # no cell cut short
    assert "left out for width: " in res.output and "tok/s" in res.output.split("left out for width: ")[1]
    assert max(len(ln) for ln in res.output.split("Ranked")[0].splitlines()) <= 70
    wide = runner.invoke(app, ["compare", str(out)], env={"COLUMNS": "250"})
    assert "left out for width" not in wide.output and "tok/s" in wide.output


def test_diverged_groups_show_their_stability_measures(sweep):
    out, df = sweep
    c = compare([out])
    blown = c.table[c.table["train.lr"] == 5.0]
    assert (blown["diverged_rate"] == 1).all() and blown["final_val_loss_mean"].isna().all()
    for _, row in blown.iterrows():  # max |grad| over every seed, the diverged ones included
        runs = runs_of(df, row["model.placement"], 5.0)
        assert row["max_grad_norm_mean"] == pytest.approx(statistics.mean(runs["max_grad_norm"]), rel=1e-12)
        assert row["max_attn_logit_mean"] == pytest.approx(statistics.mean(runs["max_attn_logit"]), rel=1e-12)
    from normbench.render.tables import cell

    row = blown.iloc[0]
    assert cell(row, "final_val_loss") == "diverged" and cell(row, "max_grad_norm")[0].isdigit()


def test_tokens_per_s_is_shown_with_how_it_was_measured(sweep):
    out, _ = sweep
    c = compare([out])
    assert "tokens_per_s" in c.metrics and any("normbench bench" in n for n in c.notes)


def test_load_curves_is_one_long_frame_of_every_logged_metric(sweep):
    out, df = sweep
    curves = normbench.load_curves(out)
    assert set(curves["run_id"]) == set(df["run_id"])
    for col in ("model.placement", "train.lr", "seed", "diverged", "step", "loss", "grad_norm", "lr",
                "attn_logit_max", "val_loss"):
        assert col in curves, col
    rid = df[~df["diverged"].astype(bool)]["run_id"].iloc[0]
    one = curves[curves["run_id"] == rid].set_index("step")
    lines = [json.loads(x) for x in (out / "lrs" / rid / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "loss" in x]
    assert one["loss"].tolist() == [x["loss"] for x in train]
    evals = {x["step"]: x["val_loss"] for x in lines if "val_loss" in x}
    assert {s: one.loc[s, "val_loss"] for s in evals} == evals
    assert one["loss"].notna().all() and one["val_loss"].notna().sum() == len(evals)
    only = normbench.load_curves(out, filters=["placement=pre"])
    assert set(only["model.placement"]) == {"pre"}


def test_figures_show_bursts_logits_and_one_colour_per_configuration(sweep, monkeypatch):
    from normbench.render import plots

    out, df = sweep
    c = compare([out])
    palette = plots.Palette(c)
    fig = plots.curves_figure(c, palette)
    titles = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    grad = next(ax for t, ax in titles.items() if t.startswith("global gradient norm"))
    assert any(t.startswith("largest attention logit") for t in titles)
    curves = normbench.load_curves(out)
    ok = curves[~curves["diverged"]]
    # the per-step maximum is drawn unsmoothed: the largest gradient norm of a finished run is on the panel
    peaks = [max(line.get_ydata()) for line in grad.get_lines() if len(line.get_ydata()) > 1]
    assert any(p == pytest.approx(ok["grad_norm"].max(), rel=1e-9) for p in peaks)
    for line in grad.get_lines():  # a log axis: nothing at or below zero, bands included
        assert (line.get_ydata() > 0).all()
    # one colour per model configuration (placement), line style per training setting (lr)
    pre_low = palette.style({"model.placement": "pre", "train.lr": 0.003})
    pre_high = palette.style({"model.placement": "pre", "train.lr": 5.0})
    post_low = palette.style({"model.placement": "post", "train.lr": 0.003})
    assert pre_low[0] == pre_high[0] and pre_low[1] != pre_high[1] and pre_low[0] != post_low[0]
    loss_ax = fig.axes[0]
    by_label = {line.get_label(): line.get_color() for line in loss_ax.get_lines()}
    assert by_label[next(k for k in by_label if k.startswith("placement=pre, lr=0.003"))] == pre_low[0]
    figs = []
    monkeypatch.setattr(plots, "_save", lambda f, path: figs.append(f) or path)
    plots.grad_norm_init(c, "x.png", palette)
    profile = {line.get_label().split(" (")[0]: line.get_color() for line in figs[0].axes[0].get_lines()}
    assert profile == {"placement=pre": pre_low[0], "placement=post": post_low[0]}


def test_report_writes_pdf_and_svg_on_request(sweep, tmp_path):
    out, _ = sweep
    res = runner.invoke(app, ["report", str(out), "--formats", "png,pdf,svg"])
    assert res.exit_code == 0, res.output
    assert (out / "figures" / "curves.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in (out / "figures" / "lr_sensitivity.svg").read_bytes()[:1000]
    res = runner.invoke(app, ["report", str(out)])  # asked no more: the extra formats are stale
    assert res.exit_code == 0 and not (out / "figures" / "curves.pdf").exists()
    res = runner.invoke(app, ["report", str(out), "--formats", "gif"])
    assert res.exit_code == 2 and "--formats: expected png, pdf or svg" in res.stderr


def test_the_same_run_id_in_two_folders_is_said_and_a_difference_named(sweep, tmp_path):
    """Issue 21: a copy of a run in another folder with other numbers was merged silently."""
    import shutil

    out, _ = sweep
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    run = next(p for p in (copy / "lrs").iterdir() if (p / "summary.json").exists()
               and not json.loads((p / "summary.json").read_text())["diverged"])
    summary = json.loads((run / "summary.json").read_text())
    summary["max_grad_norm"] = 39.5
    (run / "summary.json").write_text(json.dumps(summary))
    c = compare([out, copy], pool=True)
    note = next(n for n in c.notes if "skipped as already read" in n)
    assert f"{run.name} (differs: max_grad_norm" in note and "vs 39.5" in note and str(out) in note
    assert len(c.runs) == len(compare([out]).runs)  # counted once


def test_a_run_stopped_on_a_non_finite_gradient_shows_an_infinite_max():
    runs = pd.DataFrame([{"g": "a", "diverged": True, "final_val_loss": None, "max_grad_norm": 12.0,
                          "divergence_reason": "non-finite gradient norm"},
                         {"g": "a", "diverged": False, "final_val_loss": 2.0, "max_grad_norm": 3.0,
                          "divergence_reason": None}])
    table = aggregate(runs, ["g"], ["final_val_loss", "max_grad_norm"], "final_val_loss")
    assert table["max_grad_norm_mean"][0] == math.inf
    from normbench.render.tables import cell

    assert cell(table.iloc[0], "max_grad_norm") == "inf"
