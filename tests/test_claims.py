"""Claims as data: the verdict rule on hand-built runs, validation of the claims: key, the ledger
through the CLI, and `run` with several recipes."""
import json
import math

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from normbench.claims import combine, evaluate, parse_claims, setting_verdict
from normbench.cli import app
from normbench.errors import NormbenchError
from normbench.recipe import load_recipe
from normbench.stats import welch
from conftest import tiny

runner = CliRunner()


def runs(rows):
    """rows: (placement, lr, seed, final_val_loss or None for diverged)."""
    return pd.DataFrame([{"model.placement": p, "train.lr": lr, "seed": s, "final_val_loss": v,
                          "diverged": v is None, "vocab_size": 100, "max_grad_norm": 1.0} for p, lr, s, v in rows])


def claim(**kw):
    raw = {"source": "a paper", "statement": "post ends above pre", "metric": "final_val_loss",
           "higher": {"model.placement": "post"}, "lower": {"model.placement": "pre"}, **kw}
    return parse_claims([raw])[0]


CLEAR = [("post", 1e-3, s, v) for s, v in enumerate([2.50, 2.52, 2.54])] + \
        [("pre", 1e-3, s, v) for s, v in enumerate([2.30, 2.31, 2.32])]


def test_a_clear_difference_in_the_claimed_direction_is_held():
    res = evaluate(claim(), runs(CLEAR))
    assert res["verdict"] == "held"
    (s,) = res["settings"]
    w = welch([2.50, 2.52, 2.54], [2.30, 2.31, 2.32])
    assert s["diff"] == pytest.approx(0.21) and s["p"] == pytest.approx(w.p) and w.p < 0.05
    assert "higher 2.52 ± " in res["evidence"] and "(n=3)" in res["evidence"] and "held" in res["evidence"]


def test_the_other_direction_or_a_margin_not_met_is_not_held():
    assert evaluate(claim(higher={"model.placement": "pre"}, lower={"model.placement": "post"}),
                    runs(CLEAR))["verdict"] == "not held"
    # 0.21 above, significantly less than a claimed 0.5: not held
    assert evaluate(claim(margin=0.5), runs(CLEAR))["verdict"] == "not held"
    # claimed at least 0.2: met (0.21) and significant
    assert evaluate(claim(margin=0.2), runs(CLEAR))["verdict"] == "held"


def test_noise_is_inconclusive_and_says_how_many_seeds_would_settle_it():
    noisy = [("post", 1e-3, s, v) for s, v in enumerate([2.3, 2.6, 2.4])] + \
            [("pre", 1e-3, s, v) for s, v in enumerate([2.35, 2.3, 2.5])]
    res = evaluate(claim(), runs(noisy))
    assert res["verdict"] == "inconclusive" and res["seeds_needed"] > 3
    assert "seeds per side would settle it" in res["evidence"]
    one = [("post", 1e-3, 0, 2.6), ("pre", 1e-3, 0, 2.3)]
    res = evaluate(claim(), runs(one))
    assert res["verdict"] == "inconclusive" and "too few seeds" in res["evidence"]


def test_same_claims_use_two_one_sided_tests():
    raw = {"source": "s", "statement": "x", "metric": "final_val_loss", "margin": 0.05,
           "same": [{"model.placement": "post"}, {"model.placement": "pre"}]}
    c = parse_claims([raw])[0]
    close = [("post", 1e-3, s, v) for s, v in enumerate([2.300, 2.302, 2.304])] + \
            [("pre", 1e-3, s, v) for s, v in enumerate([2.301, 2.303, 2.305])]
    assert evaluate(c, runs(close))["verdict"] == "held"
    ninety = welch([2.300, 2.302, 2.304], [2.301, 2.303, 2.305], confidence=0.90)
    assert -0.05 < ninety.lo and ninety.hi < 0.05
    assert evaluate(c, runs(CLEAR))["verdict"] == "not held"  # 0.21 apart, significantly


def test_settings_of_the_other_factors_can_make_a_claim_mixed():
    rows = CLEAR + [("post", 3e-3, s, v) for s, v in enumerate([2.10, 2.11, 2.12])] + \
        [("pre", 3e-3, s, v) for s, v in enumerate([2.30, 2.31, 2.32])]
    res = evaluate(claim(), runs(rows))
    assert [s["verdict"] for s in res["settings"]] == ["held", "not held"] and res["verdict"] == "mixed"
    assert "lr=0.001" in res["evidence"] and "lr=0.003" in res["evidence"]
    assert combine(["held", "inconclusive"]) == "inconclusive" and combine(["not held"] * 2) == "not held"


def test_a_diverged_runs_loss_counts_as_ln_v():
    rows = [("post", 1e-3, s, None) for s in range(3)] + [("pre", 1e-3, s, v) for s, v in enumerate([2.3, 2.31, 2.32])]
    res = evaluate(claim(), runs(rows))
    assert res["verdict"] == "held" and res["settings"][0]["a"].mean == pytest.approx(math.log(100))
    verdict, _ = setting_verdict(claim(metric="diverged"), [1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    assert verdict == "held"


@pytest.mark.parametrize("bad,key,text", [
    ({"metric": "final_loss"}, "claims[0].metric", "expected one of"),
    ({"margin": -1}, "claims[0].margin", "expected a number >= 0"),
    ({"colour": 1}, "claims[0].colour", "unknown key"),
    ({"higher": {"model.placement": "sandwich"}}, "claims[0].higher", "no run of this recipe has"),
    ({"higher": {"model.nrom": "post"}}, "claims[0].higher", "unknown key"),
    ({"same": [{"model.placement": "post"}, {"model.placement": "pre"}], "higher": None}, "claims[0].same",
     "either higher and lower, or same"),
])
def test_bad_claims_are_one_line_naming_the_key(tmp_path, bad, key, text):
    c = {"source": "s", "statement": "x", "metric": "final_val_loss", "higher": {"model.placement": "post"},
         "lower": {"model.placement": "pre"}, **bad}
    c = {k: v for k, v in c.items() if v is not None}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "c", "base": tiny(),
                                 "sweep": {"grid": {"model.placement": ["pre", "post"]}}, "claims": [c]}))
    with pytest.raises(NormbenchError) as e:
        load_recipe(p)
    assert any(err.key == key and text in err.message for err in getattr(e.value, "errors", None) or [e.value])
    res = runner.invoke(app, ["run", str(p), "--out", str(tmp_path / "res")])
    assert res.exit_code == 2 and "Traceback" not in res.output and not (tmp_path / "res").exists()


def test_the_ledger_through_the_cli_and_the_report(tmp_path):
    recipe = {"name": "cl", "base": tiny(train={"steps": 10}),
              "sweep": {"grid": {"model.placement": ["pre", "post"]}, "seeds": 2},
              "claims": [{"source": "Xiong et al. 2020", "statement": "Post-LN ends above Pre-LN",
                          "metric": "final_val_loss", "higher": {"placement": "post"}, "lower": {"placement": "pre"}},
                         {"source": "folklore", "statement": "placement changes nothing", "metric": "max_grad_norm",
                          "same": [{"placement": "post"}, {"placement": "pre"}], "margin": 10.0}]}
    p = tmp_path / "cl.yaml"
    p.write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = tmp_path / "res"
    res = runner.invoke(app, ["claims", str(p), "--out", str(out)])  # nothing run yet
    assert res.exit_code == 0 and "no finished runs yet" in res.output
    assert runner.invoke(app, ["run", str(p), "--out", str(out), "-q"]).exit_code == 0
    assert (out / "cl" / "claims.yaml").exists()
    for args in (["claims", str(p), "--out", str(out)], ["claims", str(out)]):
        res = runner.invoke(app, [*args, "--format", "json"])
        assert res.exit_code == 0, res.output
        rows = json.loads(res.stdout)
        assert [r["claim"] for r in rows] == ["Post-LN ends above Pre-LN", "placement changes nothing"]
        assert all(r["verdict"] in ("held", "not held", "mixed", "inconclusive") for r in rows)
        assert "(n=2)" in rows[0]["evidence"]
    md = tmp_path / "CLAIMS.md"
    assert runner.invoke(app, ["claims", str(out), "-o", str(md)]).exit_code == 0
    assert md.read_text().startswith("| claim | source | recipe | verdict | evidence |")
    assert runner.invoke(app, ["report", str(out / "cl")]).exit_code == 0
    text = (out / "cl" / "report.md").read_text()
    assert "## Claims" in text and "Post-LN ends above Pre-LN" in text
    import normbench

    df = normbench.claims_ledger([out])
    assert list(df.columns)[:5] == ["claim", "source", "recipe", "verdict", "evidence"] and len(df) == 2


def test_run_takes_several_recipes_and_checks_them_all_first(tmp_path):
    a, b, bad = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "bad.yaml"
    a.write_text(yaml.safe_dump({"name": "a", "base": tiny(train={"steps": 4})}))
    b.write_text(yaml.safe_dump({"name": "b", "base": tiny(train={"steps": 4}, model={"norm": "rmsnorm"})}))
    bad.write_text(yaml.safe_dump({"name": "bad", "base": tiny(model={"layers": 0})}))
    out = tmp_path / "res"
    res = runner.invoke(app, ["run", str(a), str(bad), "--out", str(out)])
    assert res.exit_code == 2 and "bad.yaml: model.layers" in res.stderr and not out.exists()
    res = runner.invoke(app, ["run", str(a), str(b), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "results: a" in res.output and "results: b" in res.output
    assert (out / "a" / "index.csv").exists() and (out / "b" / "index.csv").exists()
    res = runner.invoke(app, ["run", str(a), str(a), "--out", str(out)])
    assert res.exit_code == 2 and "two recipes are named 'a'" in res.stderr
