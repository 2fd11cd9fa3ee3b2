import pytest
import yaml

from normbench.errors import NormbenchError
from normbench.recipe import load_recipe
from typer.testing import CliRunner
from normbench.cli.app import app


def write(tmp_path, obj, name="r.yaml"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    return p


def test_empty_base_is_a_valid_recipe_with_documented_defaults(tmp_path):
    rec = load_recipe(write(tmp_path, {"name": "x", "base": {}}))
    assert len(rec.runs) == 1
    cfg = rec.runs[0].cfg
    assert (cfg.model.layers, cfg.model.d_model, cfg.model.norm, cfg.model.placement) == (4, 128, "layernorm", "pre")
    assert (cfg.data.task, cfg.data.seq_len, cfg.train.batch_size, cfg.seed) == ("charlm", 128, 32, 0)


def test_grid_zip_and_seeds_expand(tmp_path):
    rec = load_recipe({"name": "x", "base": {"train": {"steps": 5}}, "sweep": {
        "grid": {"model.norm": ["layernorm", "rmsnorm", "batchnorm"], "model.placement": ["pre", "post"]},
        "zip": {"train.lr": [1e-3, 3e-3], "train.warmup_steps": [10, 30]},
        "seeds": 2}})
    assert len(rec.runs) == 3 * 2 * 2 * 2
    combos = {(r.cfg.model.norm, r.cfg.model.placement, r.cfg.train.lr, r.cfg.train.warmup_steps, r.cfg.seed)
              for r in rec.runs}
    assert len(combos) == 24
    assert all((lr, w) in {(1e-3, 10), (3e-3, 30)} for _, _, lr, w, _ in combos)
    assert {s for *_, s in combos} == {0, 1}
    assert len({r.run_id for r in rec.runs}) == 24
    assert rec.varied == ["model.norm", "model.placement", "train.lr", "train.warmup_steps", "seed"]
    assert load_recipe({"sweep": {"seeds": [3, 7]}}).runs[1].cfg.seed == 7


def test_set_overrides_base_and_fixes_a_swept_key(tmp_path):
    recipe = {"name": "x", "base": {"train": {"steps": 5}},
              "sweep": {"grid": {"model.norm": ["layernorm", "rmsnorm"]}, "seeds": 3}}
    rec = load_recipe(recipe, ["train.steps=50", "model.norm=dyt", "train.lr=3e-4", "model.qk_norm=true"])
    assert len(rec.runs) == 3
    cfg = rec.runs[0].cfg
    assert (cfg.train.steps, cfg.model.norm, cfg.train.lr, cfg.model.qk_norm) == (50, "dyt", 3e-4, True)
    assert len(load_recipe(recipe, {"seed": 4}).runs) == 2


def test_run_id_ignores_device_and_depends_on_everything_else():
    a = load_recipe({"base": {"device": "cpu"}}).runs[0]
    b = load_recipe({"base": {"device": "auto"}}).runs[0]
    c = load_recipe({"base": {"seed": 1}}).runs[0]
    assert a.run_id == b.run_id != c.run_id


def test_yaml_floats_like_1e_minus_3_are_numbers(tmp_path):
    rec = load_recipe(write(tmp_path, "base:\n  train:\n    lr: 1e-3\n"))
    assert rec.runs[0].cfg.train.lr == 1e-3
    assert rec.name == "r"  # defaults to the file's stem


BAD = [
    ({"base": {"model": {"nrom": "layernorm"}}}, "model.nrom", "did you mean model.norm"),
    ({"base": {"model": {"norm": "lnorm"}}}, "model.norm", "expected one of layernorm"),
    ({"base": {"model": {"placement": "middle"}}}, "model.placement", "pre, post, sandwich, deepnorm"),
    ({"base": {"data": {"task": "wiki"}}}, "data.task", "charlm, text, copy, reverse"),
    ({"base": {"model": {"layers": "two"}}}, "model.layers", "expected an integer"),
    ({"base": {"model": {"qk_norm": "yes"}}}, "model.qk_norm", "expected true or false"),
    ({"base": {"train": {"lr": "fast"}}}, "train.lr", "expected a number"),
    ({"base": {"train": {"batch_size": 0}}}, "train.batch_size", ">= 1"),
    ({"base": {"model": {"d_model": -8}}}, "model.d_model", ">= 1"),
    ({"base": {"train": {"lr": 0}}}, "train.lr", "> 0"),
    ({"base": {"model": {"d_model": 30, "heads": 4}}}, "model.heads", "must divide"),
    ({"base": {"model": {"norm": "none", "placement": "deepnorm"}}}, "model.norm", "deepnorm needs a normalization"),
    ({"base": {"data": {"task": "text"}}}, "data.path", "needs data.path"),
    ({"base": {"trian": {}}}, "trian", "did you mean train"),
    ({"base": {"model": [1]}}, "model", "expected a mapping"),
    ({"bsae": {}}, "bsae", "did you mean base"),
    ({"name": "../escape"}, "name", "plain folder name"),
    ({"name": "/abs/path"}, "name", "plain folder name"),
    ({"sweep": {"grid": {"model.nrom": ["a"]}}}, "sweep.grid.model.nrom", "did you mean model.norm"),
    ({"sweep": {"grid": {"model.norm": "rmsnorm"}}}, "sweep.grid.model.norm", "non-empty list"),
    ({"sweep": {"grid": {"model.norm": ["rmsnorm", "rmsnorm"]}}}, "sweep.grid.model.norm", "repeated"),
    ({"sweep": {"zip": {"train.lr": [1, 2], "train.steps": [1]}}}, "sweep.zip", "equal lengths"),
    ({"sweep": {"seeds": 0}}, "sweep.seeds", "count >= 1"),
    ({"sweep": {"seeds": ["a"]}}, "sweep.seeds", "list of integers"),
    ({"sweep": {"grdi": {}}}, "sweep.grdi", "did you mean grid"),
    ({"sweep": {"grid": {"model.norm": ["layernorm", "none"], "model.placement": ["deepnorm"]}}},
     "model.norm", "in run 2 of 2: model.norm=none, model.placement=deepnorm"),
    ({"sweep": {"grid": {"model.norm": ["bogus"]}}}, "model.norm", "expected one of"),
]


@pytest.mark.parametrize("recipe,key,text", BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
def test_bad_recipes_name_the_key(tmp_path, recipe, key, text):
    with pytest.raises(NormbenchError) as e:
        load_recipe(write(tmp_path, recipe))
    assert e.value.key == key and text in str(e.value)
    assert str(e.value).startswith(str(tmp_path / "r.yaml"))


def test_set_errors():
    with pytest.raises(NormbenchError, match="did you mean train.steps"):
        load_recipe({}, ["train.stpes=3"])
    with pytest.raises(NormbenchError, match="KEY=VALUE"):
        load_recipe({}, ["train.steps"])
    with pytest.raises(NormbenchError, match="sweep.zip"):
        load_recipe({"sweep": {"zip": {"train.lr": [1, 2], "train.steps": [1, 2]}}}, ["train.lr=3"])


def test_text_task_path_is_relative_to_the_recipe(tmp_path):
    (tmp_path / "corpus.txt").write_text("hello world " * 500)
    rec = load_recipe(write(tmp_path, {"base": {"data": {"task": "text", "path": "corpus.txt"}}}))
    assert rec.runs[0].cfg.data.path == str(tmp_path / "corpus.txt")
    with pytest.raises(NormbenchError, match="no such file"):
        load_recipe(write(tmp_path, {"base": {"data": {"task": "text", "path": "missing.txt"}}}))


# --- what a new user hit (issue 12) -------------------------------------------------------------


def text_recipe(tmp_path, corpus="corpus.txt", **data):
    return write(tmp_path, {"name": "t", "base": {"data": {"task": "text", "path": corpus, **data}}})


def test_a_text_runs_id_follows_the_files_content_not_its_path(tmp_path):
    (tmp_path / "corpus.txt").write_text("hello world " * 500)
    first = load_recipe(text_recipe(tmp_path)).runs[0].run_id
    with open(tmp_path / "corpus.txt", "a") as f:  # appending a line: a new experiment, a new id
        f.write("one more line\n")
    edited = load_recipe(text_recipe(tmp_path)).runs[0].run_id
    assert edited != first
    elsewhere = tmp_path / "copy"  # the same text in another folder resumes the same run
    elsewhere.mkdir()
    (elsewhere / "corpus.txt").write_text((tmp_path / "corpus.txt").read_text())
    assert load_recipe(text_recipe(elsewhere)).runs[0].run_id == edited
    # the text trained on counts: beyond data.max_chars an edit changes nothing
    capped = load_recipe(text_recipe(tmp_path, max_chars=3000)).runs[0].run_id
    with open(tmp_path / "corpus.txt", "a") as f:
        f.write("and another\n")
    assert load_recipe(text_recipe(tmp_path, max_chars=3000)).runs[0].run_id == capped


def test_a_corpus_shorter_than_a_context_is_refused_before_any_run(tmp_path):
    (tmp_path / "corpus.txt").write_text("x" * 1000)  # val split 100 chars < seq_len 128 + 2
    with pytest.raises(NormbenchError) as e:
        load_recipe(text_recipe(tmp_path))
    assert e.value.key == "data.path" and "validation split" in str(e.value) and "130" in str(e.value)
    assert len(load_recipe(text_recipe(tmp_path, seq_len=64)).runs) == 1


def test_set_data_path_is_relative_to_the_current_folder(tmp_path, monkeypatch):
    sub = tmp_path / "recipes"
    sub.mkdir()
    p = write(sub, {"name": "t", "base": {}})
    (tmp_path / "mine.txt").write_text("abc " * 2000)
    monkeypatch.chdir(tmp_path)
    rec = load_recipe(p, ["data.task=text", "data.path=mine.txt"])
    assert rec.runs[0].cfg.data.path == str(tmp_path / "mine.txt")
    with pytest.raises(NormbenchError) as e:
        load_recipe(p, ["data.task=text", "data.path=recipes/nope.txt"])
    assert str(e.value).startswith("--set data.path: no such file")


def test_errors_from_a_flag_name_the_flag_not_the_file(tmp_path):
    p = write(tmp_path, {"name": "t", "base": {}})
    for sets, start in ((["train.stpes=3"], "--set train.stpes: unknown key (did you mean train.steps?)"),
                        (["train.lr=abc"], "--set train.lr: expected a number")):
        with pytest.raises(NormbenchError) as e:
            load_recipe(p, sets)
        assert str(e.value).startswith(start) and str(p) not in str(e.value)
    with pytest.raises(NormbenchError) as e:  # a mistake in the file still names the file
        load_recipe(write(tmp_path, {"base": {"train": {"stpes": 3}}}))
    assert str(e.value).startswith(str(tmp_path / "r.yaml"))


def test_set_reaches_the_sweep(tmp_path):
    p = write(tmp_path, {"name": "t", "base": {}, "sweep": {"grid": {"model.norm": ["layernorm", "rmsnorm"]}}})
    assert len(load_recipe(p, ["sweep.seeds=3"]).runs) == 6
    rec = load_recipe(p, ["sweep.grid.model.placement=[pre, post]", "sweep.seeds=[4]"])
    assert {(r.cfg.model.norm, r.cfg.model.placement, r.cfg.seed) for r in rec.runs} == \
        {(n, pl, 4) for n in ("layernorm", "rmsnorm") for pl in ("pre", "post")}
    for sets, text in ((["sweep.seeds=0"], "--set sweep.seeds: expected a count >= 1"),
                       (["sweep.grid.model.norm=rmsnorm"], "--set sweep.grid.model.norm: expected a non-empty list"),
                       (["sweep.grid.model.nrom=[a]"], "--set sweep.grid.model.nrom: unknown key"),
                       (["sweep.sedes=3"], "--set sweep.sedes: unknown key")):
        with pytest.raises(NormbenchError) as e:
            load_recipe(p, sets)
        assert str(e.value).startswith(text), str(e.value)


def test_every_mistake_is_reported_at_once(tmp_path):
    p = write(tmp_path, {"name": "t", "colour": 1,
                         "base": {"model": {"layers": "four", "nrom": "x"}, "train": {"lr": -1}},
                         "sweep": {"seeds": 0}})
    with pytest.raises(NormbenchError) as e:
        load_recipe(p)
    lines = str(e.value).splitlines()
    assert sorted(err.key for err in e.value.errors) == ["colour", "model.layers", "model.nrom", "sweep.seeds",
                                                          "train.lr"]
    p = write(tmp_path, {"name": "t", "base": {"model": {"layers": "four", "nrom": "x"}, "train": {"lr": -1}}})
    with pytest.raises(NormbenchError) as e:
        load_recipe(p)
    assert sorted(err.key for err in e.value.errors) == ["model.layers", "model.nrom", "train.lr"]
    assert all(line.startswith(str(p)) for line in str(e.value).splitlines()) and len(lines) >= 2


def test_an_empty_recipe_file_is_an_error(tmp_path):
    with pytest.raises(NormbenchError, match="is empty"):
        load_recipe(write(tmp_path, ""))


def test_a_warmup_longer_than_the_run_is_warned_about(tmp_path):
    from normbench.sweep.plan import recipe_warnings

    rec = load_recipe({"name": "w", "base": {"train": {"steps": 50, "warmup_steps": 100}}})
    (text,) = recipe_warnings(rec)
    assert "train.warmup_steps=100 > train.steps=50" in text and "50% of train.lr" in text
    assert recipe_warnings(load_recipe({"name": "w", "base": {"train": {"steps": 100, "warmup_steps": 100}}})) == []


@pytest.mark.parametrize("base,keys", [
    ({"train": {"stpes": 100}, "data": {"task": "text", "path": "nothere.txt"}}, {"train.stpes", "base.data.path"}),
    ({"model": {"heads": 3, "d_model": 64}, "train": {"steps": 0}}, {"train.steps", "model.heads"}),
])
def test_mistakes_of_every_stage_come_in_one_round(tmp_path, base, keys):
    """Issue 21: a missing file hid every error under base:, and a bad value hid the rules between keys."""
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "r", "base": base}))
    with pytest.raises(NormbenchError) as e:
        load_recipe(p)
    got = {err.key for err in getattr(e.value, "errors", None) or [e.value]}
    assert keys <= got, got


def test_ten_mistakes_take_one_round(tmp_path):
    raw = {"name": "bad/name", "colour": 1,
           "base": {"model": {"heads": 3, "d_model": 64, "nrom": "x"}, "train": {"steps": 0, "lr": "fast"},
                    "data": {"task": "text", "path": "missing.txt"}},
           "sweep": {"grid": {"model.layers": [2, 2]}, "seeds": -1, "zpi": {}},
           "claims": [{"source": "s"}]}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["validate", str(p)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    for key in ("name", "colour", "model.nrom", "train.steps", "train.lr", "model.heads", "base.data.path",
                "sweep.zpi", "sweep.seeds", "sweep.grid.model.layers", "claims[0]"):
        assert f": {key}" in res.stderr or f" {key}:" in res.stderr or key in res.stderr, (key, res.stderr)


def test_a_huge_broken_sweep_is_refused_at_once_with_the_repeated_value_only(tmp_path):
    """Issue 21: a million-run recipe whose only fault was a repeated value took 23 s to refuse."""
    import time

    grid = {f"model.{k}": list(range(1, 11)) for k in ("layers", "d_ff", "heads")}
    grid["train.steps"] = list(range(1, 1000)) + [5]
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "r", "base": {"train": {"stpes": 1}}, "sweep": {"grid": grid}}))
    t0 = time.perf_counter()
    with pytest.raises(NormbenchError) as e:
        load_recipe(p)
    assert time.perf_counter() - t0 < 5
    errs = {err.key: err.message for err in getattr(e.value, "errors", None) or [e.value]}
    assert errs["sweep.grid.train.steps"] == "repeated value 5 in its list of 1000 values"
    assert "train.stpes" in errs  # the base's mistakes in the same round


def test_a_list_for_one_key_suggests_the_sweep(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "r", "base": {}}))
    with pytest.raises(NormbenchError) as e:
        load_recipe(p, ["model.norm=[rmsnorm,dyt]"])
    assert e.value.key == "--set model.norm" and "--set 'sweep.grid.model.norm=[rmsnorm, dyt]'" in e.value.message
    assert [r.cfg.model.norm for r in load_recipe(p, ["sweep.grid.model.norm=[rmsnorm, dyt]"]).runs] == \
        ["rmsnorm", "dyt"]


def test_overriding_one_arm_of_a_recipe_with_claims_is_not_refused(tmp_path):
    """Issue 21: --set model.norm=rmsnorm on a recipe with claims about dyt was refused with three errors."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    rec = load_recipe(root / "recipes/literature/rmsnorm_vs_layernorm.yaml", ["model.norm=rmsnorm"])
    assert {r.cfg.model.norm for r in rec.runs} == {"rmsnorm"} and rec.claims_ids  # judged as written
