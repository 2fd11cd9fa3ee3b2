import copy

import pytest

TINY = {
    "model": {"layers": 2, "d_model": 32, "heads": 2, "d_ff": 64},
    "data": {"seq_len": 16, "max_chars": 20000},
    "train": {"steps": 12, "batch_size": 4, "eval_every": 6, "eval_tokens": 128, "warmup_steps": 2},
    "device": "cpu",
}


# a model too large for any machine: its first big weight fails to allocate at once (a real crash at run
# time, past validation, without using memory), as a run that asks for more memory than a node has
TOO_BIG_D_FF = 2**40
ALLOC_ERROR = "can't allocate memory"


def tiny(**sections) -> dict:
    """The tiny base config, with per-section overrides: tiny(model={"norm": "rmsnorm"})."""
    raw = copy.deepcopy(TINY)
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return raw


@pytest.fixture
def tiny_base():
    return tiny


@pytest.fixture(scope="session")
def ray_instance():
    """One real local Ray instance for the whole test session (Ray has no local mode any more),
    with a small object store: run records are small, and CI's /dev/shm may be too."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -c constraints.txt -e '.[ray]')")
    ray.init(num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()
