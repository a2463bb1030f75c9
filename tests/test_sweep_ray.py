"""The Ray executor (a local 2-CPU Ray instance, two model-holding actors) gives the local executor's table."""

from __future__ import annotations

import pandas as pd
import pytest
from test_sweep_helpers import write_config

from emocircuits.sweeps import run_sweep

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_local():
    try:
        import ray
    except ImportError:
        print("ray is not installed: pip install 'emocircuits[ray]' to run this test")
        pytest.skip("ray is not installed (pip install 'emocircuits[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_executor_equals_local(ray_local, tmp_path):
    cfg = write_config(tmp_path, layers='["0", "1-2", "7"]', factors="[0.0, 2.0]")
    local = run_sweep(cfg, tmp_path / "local", progress=False)
    remote = run_sweep(cfg, tmp_path / "ray", executor="ray", workers=2, progress=False)
    pd.testing.assert_frame_equal(remote.table, local.table)
    assert (remote.table["status"] == "failed").sum() == 2  # layer 7 is refused once the model spec is known
    import json

    workers = {json.loads(p.read_text())["worker"] for p in (tmp_path / "ray" / "cells").glob("*.json")} - {"precheck"}
    assert len(workers) == 2  # both actors ran cells
    assert ray_local.is_initialized()  # an existing Ray instance is reused, not shut down


def test_ray_prepare_errors_surface_as_one_sentence(ray_local, tmp_path):
    from emocircuits.base.errors import EmocircuitsError

    cfg = write_config(tmp_path)
    text = cfg.read_text().replace('spec = "tiny-llama"', 'spec = "/nonexistent/model.gguf"')
    cfg.write_text(text)
    with pytest.raises(EmocircuitsError, match="does not exist"):
        run_sweep(cfg, tmp_path / "bad", executor="ray", workers=1, progress=False)
