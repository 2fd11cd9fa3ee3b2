"""Claims as data: validation of the claims: key, the ledger through the CLI and the report, a
shortened look that leaves the claims alone, settling by sequential looks (a divergence to held,
a kill -9 resumed), and `run` with several recipes. The verdict rule itself is tested on hand-built tables in test_ledger.py."""
import json

import pytest
import yaml
from typer.testing import CliRunner

from normbench.cli.app import app
from normbench.errors import NormbenchError
from normbench.recipe import load_recipe
from conftest import tiny

runner = CliRunner()


@pytest.mark.parametrize("bad,key,text", [
    ({"metric": "final_loss"}, "claims[0].metric", "expected one of"),
    ({"margin": -1}, "claims[0].margin", "expected a number >= 0"),
    ({"metric": "max_attn_logit", "margin": 0.5}, "claims[0].margin", "a factor >= 1 on the log scale"),
    ({"colour": 1}, "claims[0].colour", "unknown key"),
    ({"higher": {"model.placement": "sandwich"}}, "claims[0].higher", "no run of this recipe has"),
    ({"higher": {"model.nrom": "post"}}, "claims[0].higher", "unknown key"),
    ({"same": [{"model.placement": "post"}, {"model.placement": "pre"}], "higher": None, "lower": None},
     "claims[0].margin", "needs a margin"),
    ({"same": [{"model.placement": "post"}, {"model.placement": "pre"}], "margin": 0.1}, "claims[0].higher",
     "does not belong to a same claim"),
    ({"candidate": {"model.placement": "post"}, "higher": None, "lower": None, "margin": 0.1},
     "claims[0].reference", "needs candidate, reference"),
    ({"larger_at": {"model.placement": "post"}}, "claims[0].smaller_at", "needs higher, lower, larger_at"),
    ({"metric": "diverged", "margin": 0.1}, "claims[0].margin", "is a rate: no margin"),
    ({"scale": "cubic"}, "claims[0].scale", "expected linear or log"),
    ({"across": "some"}, "claims[0].across", "expected every or average"),
    ({"effect": -1}, "claims[0].effect", "expected a number > 0"),
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
        assert "paired t" in rows[0]["test"] and "equivalence" in rows[1]["test"]
        assert "placement=post" in rows[0]["evidence"] and "(n=2)" in rows[0]["evidence"]
        assert all(0 <= r["p"] <= r["p_adjusted"] <= 1 for r in rows)
    md = tmp_path / "CLAIMS.md"
    assert runner.invoke(app, ["claims", str(out), "-o", str(md)]).exit_code == 0
    assert md.read_text().startswith("| claim | source | recipe | test | verdict | evidence | p | p_adjusted |")
    assert runner.invoke(app, ["report", str(out / "cl")]).exit_code == 0
    text = (out / "cl" / "report.md").read_text()
    assert "## Claims" in text and "Post-LN ends above Pre-LN" in text
    assert "the 4 runs of recipe cl as written (train.steps=10" in text
    import normbench

    df = normbench.claims_ledger([out])
    assert list(df.columns)[:10] == ["claim", "source", "recipe", "test", "verdict", "evidence", "p",
                                     "p_adjusted", "family", "q_ledger"] and len(df) == 2
    # two sources, two families: each claim's Holm is over its own family (of one), BH over both
    assert list(df["family"]) == ["cl: Xiong et al. 2020", "cl: folklore"]
    assert list(df["p_adjusted"]) == pytest.approx(list(df["p"]))
    from normbench.analysis.sequential import benjamini_hochberg
    assert list(df["q_ledger"]) == pytest.approx(benjamini_hochberg(list(df["p"])))
    table = runner.invoke(app, ["claims", str(out)])
    assert "family" in table.stdout and "q_ledger" in table.stdout


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


def test_a_shortened_look_leaves_the_claims_alone(tmp_path):
    """`run R --set train.steps=N` changes run ids: claims.yaml keeps the runs of the recipe as
    written, `run` says so, and the ledger does not count the shortened runs."""
    recipe = {"name": "sm", "base": tiny(train={"steps": 8}),
              "sweep": {"grid": {"model.placement": ["pre", "post"]}, "seeds": 2},
              "claims": [{"source": "s", "statement": "post ends above pre", "metric": "final_val_loss",
                          "higher": {"placement": "post"}, "lower": {"placement": "pre"}}]}
    p = tmp_path / "sm.yaml"
    p.write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = tmp_path / "res"
    assert runner.invoke(app, ["run", str(p), "--out", str(out), "-q"]).exit_code == 0
    before = (out / "sm" / "claims.yaml").read_text()
    ledger_before = runner.invoke(app, ["claims", str(out), "--format", "json"]).stdout
    res = runner.invoke(app, ["run", str(p), "--out", str(out), "--set", "train.steps=4"])
    assert res.exit_code == 0 and "claims.yaml left alone" in res.output
    assert (out / "sm" / "claims.yaml").read_text() == before
    assert runner.invoke(app, ["claims", str(out), "--format", "json"]).stdout == ledger_before
    # an override that keeps the run ids (how a run executes) still writes them
    assert load_recipe(p, ["device=cpu"]).claims_ids is None


def test_settle_takes_a_divergence_of_3_of_3_to_6_seeds_and_holds_it(tmp_path):
    """Issue 31's synthetic case, with real runs: lr 1e3 diverges in every seed, lr 1e-3 in none. At 3
    seeds McNemar's exact p is 1/8, undecided; --settle plans the look at 6 seeds (settle.yaml, written
    before its runs), runs them, and at 6 of 6 discordant seeds (p = 1/64) the claim is held."""
    recipe = {"name": "dv", "base": tiny(train={"steps": 6, "eval_every": 6, "warmup_steps": 0}, data={"seq_len": 8}),
              "sweep": {"grid": {"train.lr": [1e-3, 1e3]}, "seeds": 3},
              "claims": [{"source": "s", "statement": "lr 1e-3 ends below lr 1e3", "metric": "final_val_loss",
                          "higher": {"train.lr": 1e3}, "lower": {"train.lr": 1e-3}, "looks": [3, 6]}]}
    p = tmp_path / "dv.yaml"
    p.write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = tmp_path / "res"
    assert runner.invoke(app, ["run", str(p), "--out", str(out), "-q"]).exit_code == 0
    (first,) = json.loads(runner.invoke(app, ["claims", str(p), "--out", str(out), "--format", "json"]).stdout)
    assert first["verdict"] == "inconclusive" and "McNemar exact (divergence)" in first["test"]
    assert "all 3 diverged" in first["evidence"] and "next look is at n=6" in first["evidence"]
    res = runner.invoke(app, ["claims", str(p), "--out", str(out), "--settle", "--max-seeds", "6", "--format", "json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    assert row["verdict"] == "held" and row["seeds"] == 6 and row["looks"] == "6 of 3/6"
    assert "all 6 diverged" in row["evidence"] and "p = 0.016" in row["evidence"]
    entry = yaml.safe_load((out / "dv" / "settle.yaml").read_text())["lr 1e-3 ends below lr 1e3"]
    assert entry["design"] == {"looks": [3, 6], "spending": "pocock"} and entry["first"] == 3
    (look,) = entry["looks"]
    assert look["n"] == 6 and look["seeds"] == [0, 1, 2, 3, 4, 5] and len(look["runs"]) == 12
    # settling again runs nothing: the claim is decided
    again = runner.invoke(app, ["claims", str(p), "--out", str(out), "--settle"])
    assert again.exit_code == 0 and "runs to go" not in again.stderr
    res = runner.invoke(app, ["claims", str(out / "dv"), "--settle"])
    assert res.exit_code == 2 and "expected recipe files" in res.stderr


def test_settle_resumes_the_same_look_after_kill_9(tmp_path):
    """The look's plan is on disk before its runs start: a settle killed -9 mid-look resumes that look
    (the same seeds and run ids), never a new plan."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from normbench.sweep import store

    recipe = {"name": "kl", "base": tiny(train={"steps": 30, "eval_every": 30}, data={"seq_len": 8}),
              "sweep": {"grid": {"model.norm": ["layernorm", "rmsnorm"]}, "seeds": 2},
              "claims": [{"source": "s", "statement": "rmsnorm ends above layernorm", "metric": "final_val_loss",
                          "higher": {"norm": "rmsnorm"}, "lower": {"norm": "layernorm"}, "looks": [2, 4]}]}
    p = tmp_path / "kl.yaml"
    p.write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = tmp_path / "res"
    assert runner.invoke(app, ["run", str(p), "--out", str(out), "-q"]).exit_code == 0
    plan_file = out / "kl" / "settle.yaml"
    args = [sys.executable, "-m", "normbench", "claims", str(p), "--out", str(out), "--settle", "--jobs", "1"]
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline, plan = time.time() + 120, None
    while time.time() < deadline and driver.poll() is None:
        if plan_file.exists():
            plan = yaml.safe_load(plan_file.read_text())["rmsnorm ends above layernorm"]["looks"][0]
            if any(store.status(out / "kl" / r) in store.DONE for r in plan["runs"] if r not in first_ids(out)):
                break
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.communicate()
    assert plan is not None and plan["n"] == 4
    left = [r for r in plan["runs"] if store.status(out / "kl" / r) not in store.DONE]
    assert left, "the look finished before the kill: nothing was resumed"
    res = runner.invoke(app, ["claims", str(p), "--out", str(out), "--settle", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(plan_file.read_text())["rmsnorm ends above layernorm"]["looks"][0] == plan
    assert all(store.status(out / "kl" / r) in store.DONE for r in plan["runs"])
    assert json.loads(res.stdout)[0]["looks"] == "4 of 2/4"


def first_ids(out):
    """The run ids of the recipe as written (claims.yaml)."""
    return set(yaml.safe_load((out / "kl" / "claims.yaml").read_text())["runs"])


def test_an_effect_on_the_log_scale_is_a_factor_above_one(tmp_path):
    c = {"source": "s", "statement": "x", "metric": "max_attn_logit", "higher": {"model.placement": "post"},
         "lower": {"model.placement": "pre"}, "effect": 0.5}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "c", "base": tiny(), "sweep": {"grid": {"model.placement": ["pre", "post"]}},
                                 "claims": [c]}))
    with pytest.raises(NormbenchError) as e:
        load_recipe(p)
    assert e.value.key == "claims[0].effect" and "a factor > 1 on the log scale" in e.value.message


def test_one_claims_looks_never_change_another_claims_design(tmp_path):
    """The seeds settle adds to one claim's arms are that claim's: another claim on overlapping arms
    keeps its pairing and its n (found on the reference suite: Xiong's interaction turned Welch)."""
    from normbench.analysis.ledger import judge, sources_for

    recipe = {"name": "iso", "base": tiny(train={"steps": 6, "eval_every": 6}, data={"seq_len": 8}),
              "sweep": {"grid": {"model.norm": ["layernorm", "rmsnorm"], "model.placement": ["pre", "post"]},
                        "seeds": 2},
              "claims": [{"source": "s", "statement": "settled", "metric": "final_val_loss",
                          "where": {"placement": "pre"}, "higher": {"norm": "rmsnorm"},
                          "lower": {"norm": "layernorm"}, "looks": [2, 3]},
                         {"source": "t", "statement": "other", "metric": "final_val_loss",
                          "higher": {"norm": "rmsnorm"}, "lower": {"norm": "layernorm"}, "effect": 5.0}]}
    p = tmp_path / "iso.yaml"
    p.write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = tmp_path / "res"
    assert runner.invoke(app, ["run", str(p), "--out", str(out), "-q"]).exit_code == 0
    assert runner.invoke(app, ["claims", str(p), "--out", str(out), "--settle", "--budget", "4"]).exit_code == 0
    judged = {c.statement: res for _, c, _, res in judge(sources_for([p], out))}
    assert [look["seeds"] for look in judged["settled"]["looks"]] == [2, 3]
    other = judged["other"]["settings"]
    assert all(s["contrast"].method == "paired t" and s["contrast"].n == (2,) for s in other)
