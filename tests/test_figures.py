"""Figures group as the table does and n counts seeds (the quickstart's shape: one seed at two
warmups per placement)."""
from pathlib import Path

import pytest

import normbench
from normbench.render import plots
from normbench.analysis.compare import compare
from conftest import tiny


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("fig") / "results"
    recipe = {"name": "q", "base": tiny(train={"steps": 6, "measure_every": 2}),
              "sweep": {"grid": {"model.placement": ["pre", "post"], "train.warmup_steps": [0, 4]}}}
    normbench.run_recipe(recipe, out=out, jobs=2, threads=1)
    return compare([out])


def test_the_residual_profile_keeps_apart_what_the_table_keeps_apart(quick):
    lines = plots.resid_rms_lines(quick)
    assert len(lines) == len(quick.table) == 4  # one line per row of the table, warmup included
    assert {label for label, *_ in lines} == {quick.label(r) for _, r in quick.table.iterrows()}
    assert all(n == 1 for _, _, n, *_ in lines)  # one seed each, said as such
    for label, row, n, (x, y), init in lines:  # each line is its own run's profile
        run = quick.runs[quick.runs["group"] == label].iloc[0]
        assert list(y) == pytest.approx(run["resid_rms_by_layer"])


def test_the_init_gradient_profile_merges_training_keys_and_counts_seeds(quick):
    lines = plots.grad_norm_init_lines(quick)
    # warmup cannot change the step-0 gradient: one line per placement, and it is one seed, not two runs
    assert sorted(label for label, *_ in lines) == ["placement=post", "placement=pre"]
    assert all(n == 1 for _, _, n, _ in lines)
    path = plots.grad_norm_init(quick, quick.sources[0] + "/g.png")
    assert path.exists()


def test_the_api_report_names_its_own_grouping_and_leaves_the_folder_alone(quick, tmp_path):
    """Issue 21: the README's API example overwrote the Quick start's report, and its header gave a
    command that makes a different report."""
    src = quick.sources[0]
    c = normbench.compare_results([src], by="model.placement", filters=["train.warmup_steps=0"])
    dest = tmp_path / "by_placement"
    path = normbench.write_report(c, dest)
    assert path == dest / "report.md" and not (Path(src) / "report.md").exists()
    text = path.read_text()
    assert ("normbench.write_report(normbench.compare_results(" in text and "by=['model.placement']" in text
            and "filters=['train.warmup_steps=0']" in text)
    # in the folder it compares: the CLI line, with the same grouping and filter
    path = normbench.write_report(c, src)
    assert "`normbench report " in path.read_text() and "--by model.placement --filter train.warmup_steps=0" \
        in path.read_text()


def test_a_regenerated_report_that_did_not_change_is_not_rewritten(quick, tmp_path):
    import os

    dest = tmp_path / "again"
    normbench.write_report(quick, dest)
    files = sorted(p for p in dest.rglob("*") if p.is_file())
    before = {p: os.stat(p).st_mtime_ns for p in files}
    normbench.write_report(quick, dest)
    assert {p: os.stat(p).st_mtime_ns for p in files} == before


def test_panels_separate_and_per_seed_for_slides(quick, tmp_path):
    from typer.testing import CliRunner

    from normbench.cli.app import app

    import shutil

    src = tmp_path / "q"
    shutil.copytree(quick.sources[0], src)
    res = CliRunner().invoke(app, ["report", str(src), "--panels", "separate", "--per-seed"])
    assert res.exit_code == 0, res.output
    names = {p.name for p in (src / "figures").glob("curves_*.png")}
    assert {"curves_loss.png", "curves_val_loss.png", "curves_grad_norm.png"} <= names
    text = (src / "report.md").read_text()
    assert "--panels separate --per-seed" in text and "(figures/curves_loss.png)" in text
    # back to one figure: the separate panels of the earlier report are removed
    assert CliRunner().invoke(app, ["report", str(src)]).exit_code == 0
    assert not list((src / "figures").glob("curves_*.png"))
    res = CliRunner().invoke(app, ["report", str(src), "--panels", "apart"])
    assert res.exit_code == 2 and "--panels" in res.output


def test_every_figure_is_titled_with_its_recipe(quick):
    fig = plots.curves_figure(quick)
    assert fig._suptitle.get_text().startswith("q: training curves")
    assert plots.recipe_title(quick) == "q"


def test_figures_draw_groups_whose_key_is_unset_for_some(tmp_path):
    """dyt_data_regime: model.dyt_alpha_ffn is null for LayerNorm (NaN in the runs, '-' in the
    table); the per-layer figures found no style for it."""
    out = tmp_path / "results"
    recipe = {"name": "d", "base": tiny(train={"steps": 4, "eval_every": 4, "measure_every": 2},
                                        model={"dyt_alpha_ffn": 0.5}),
              "sweep": {"grid": {"model.norm": ["layernorm", "dyt"], "data.max_chars": [20000, 30000]}}}
    normbench.run_recipe(recipe, out=out, jobs=2, threads=1)
    c = compare([out])
    assert plots.grad_norm_init(c, tmp_path / "g.png").exists()
    assert plots.resid_rms(c, tmp_path / "r.png").exists()
