"""A recipe is untrusted text: YAML that is malformed, not a mapping, tagged (no code runs), has
duplicate keys, nests without end or expands aliases without end is refused in one line naming the
file, while ordinary anchors still work; and a count takes only integers, not 2.5, true or "4"."""
import pytest
import yaml

from normbench.config import from_dict
from normbench.errors import NormbenchError
from normbench.recipe import load_recipe


def write(tmp_path, obj, name="r.yaml"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    return p


@pytest.mark.parametrize("text,expected", [
    ("base: {model: [1, 2\n", "line 2"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("base: !!python/object/apply:os.system ['touch PWNED']\n", "tags are not allowed"),
    ("base: {}\nbase: {}\n", "duplicate key 'base'"),
])
def test_malformed_yaml(tmp_path, text, expected):
    with pytest.raises(NormbenchError, match=expected):
        load_recipe(write(tmp_path, text))
    assert not (tmp_path / "PWNED").exists()


def test_pathological_yaml_is_refused_in_one_line(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("base: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(NormbenchError, match="refused: nested"):
        load_recipe(deep)
    laughs = tmp_path / "laughs.yaml"
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    laughs.write_text("description: x\nbase: {}\nsweep:\n  grid:\n    " + "\n    ".join(lines) + "\n")
    with pytest.raises(NormbenchError, match="aliases are expanded"):
        load_recipe(laughs)
    shallow = tmp_path / "anchors.yaml"  # ordinary anchors and aliases still work
    shallow.write_text("name: a\nbase:\n  model: &m {layers: 2}\nsweep:\n  grid:\n    model.layers: [2, 3]\n")
    assert len(load_recipe(shallow).runs) == 2


@pytest.mark.parametrize("value", [True, 2.5, 4.0, "4"])
def test_a_count_takes_only_integers(value):
    with pytest.raises(NormbenchError, match="expected an integer"):
        from_dict({"model": {"layers": value}})
