"""Figures group as the table does and n counts seeds (the quickstart's shape: one seed at two
warmups per placement)."""
import pytest

import normbench
from normbench import plots
from normbench.compare import compare
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
