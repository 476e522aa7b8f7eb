"""Helpers of the model-repository tests: a repository of two models with three versions each (the ``repo``
fixture in conftest.py), and requests that check a version answers with its own file's result."""
import os

from .models import assert_outputs, json_body, local, result, rows, write_version

X = rows(2, seed=42)
SEEDS = {"a": {1: 11, 2: 12, 3: 13}, "b": {1: 21, 2: 22, 3: 23}}


def vpath(repo, model, version, filename="model.ember"):
    return os.path.join(os.fspath(repo), model, str(version), filename)


async def infer(c, model, version=None, x=X):
    route = f"/v2/models/{model}" + (f"/versions/{version}" if version is not None else "") + "/infer"
    return await c.post(route, json=json_body({"x": x}))


async def serves(c, repo, model, version, latest=False):
    """``model`` answers at ``version`` (and as the latest when ``latest``) with that version's own file."""
    want = local(vpath(repo, model, version), {"x": X})
    r = await infer(c, model, version)
    assert r.json()["model_version"] == str(version)
    assert_outputs(result(r), want)
    if latest:
        r = await infer(c, model)
        assert r.json()["model_version"] == str(version)
        assert_outputs(result(r), want)


async def index(c, ready=None):
    r = await c.post("/v2/repository/index", json={} if ready is None else {"ready": ready})
    assert r.status_code == 200, r.text
    return r.json()


def ready_versions(entries, model):
    return [e["version"] for e in entries if e["name"] == model and e["state"] == "READY"]


def make_repo(r):
    """<r> with models a and b, versions 1, 2, 3 of each (different weights per version)."""
    for model, versions in SEEDS.items():
        for v, seed in versions.items():
            write_version(r, model, v, seed)
    return r
