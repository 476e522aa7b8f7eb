"""The model repository over ASGI: version folders and version policies, config.json (bad ones fail
alone, with the file and the field named), the repository extension (index / load / unload / reload),
renamed inputs and outputs, .onnx models on ONNX Runtime, serving a list of files, and readiness that
waits for the startup loads."""
import asyncio
import os
import shutil
import threading

import numpy as np
import orjson
import onnxruntime as ort
import pytest

from ember.serve import ServerConfig, create_app

from .models import (assert_outputs, binary_body, build_models, error, json_body, local, result, rows, run, serving,
                     write_config, write_version)

X = rows(2, seed=42)
SEEDS = {"a": {1: 11, 2: 12, 3: 13}, "b": {1: 21, 2: 22, 3: 23}}


@pytest.fixture
def repo(tmp_path):
    """<tmp>/repo with models a and b, versions 1, 2, 3 of each (different weights per version)."""
    r = tmp_path / "repo"
    for model, versions in SEEDS.items():
        for v, seed in versions.items():
            write_version(r, model, v, seed)
    return r


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


# ---- versions and policies ---------------------------------------------------------------------------------
def test_default_policy_serves_only_the_latest_version(repo):
    async def main():
        async with serving(repo) as (c, app):
            idx = await index(c)
            assert idx == [{"name": "a", "version": "3", "state": "READY"},
                           {"name": "b", "version": "3", "state": "READY"}]
            await serves(c, repo, "a", 3, latest=True)
            await serves(c, repo, "b", 3, latest=True)
            assert (await c.get("/v2/models/a")).json()["versions"] == ["3"]
            for v in (1, 2):
                msg = error(await infer(c, "a", v), 404)
                assert f"no version '{v}'" in msg and "versions: 3" in msg
                error(await c.get(f"/v2/models/a/versions/{v}/ready"), 404)
            cfg = (await c.get("/v2/models/a/config")).json()
            assert cfg["version_policy"] == {"latest": {"num_versions": 1}}

    run(main())


@pytest.mark.parametrize("policy,versions", [
    ({"all": {}}, [1, 2, 3]),
    ({"specific": [1, 3]}, [1, 3]),
    ({"specific": {"versions": [2]}}, [2]),
    ({"latest": 2}, [2, 3]),
    ({"latest": {"num_versions": 5}}, [1, 2, 3]),
], ids=["all", "specific-short", "specific-long", "latest-short", "latest-more-than-there-are"])
def test_version_policy(repo, policy, versions):
    write_config(repo, "a", {"version_policy": policy})

    async def main():
        async with serving(repo) as (c, app):
            idx = await index(c)
            assert ready_versions(idx, "a") == [str(v) for v in versions]
            assert ready_versions(idx, "b") == ["3"]  # b has no config.json
            for v in (1, 2, 3):
                if v in versions:
                    await serves(c, repo, "a", v, latest=(v == max(versions)))
                else:
                    error(await infer(c, "a", v), 404)
            assert (await c.get("/v2/models/a")).json()["versions"] == [str(v) for v in versions]

    run(main())


# ---- config.json errors: that model alone is not loaded -----------------------------------------------------
BAD_CONFIGS = [
    ("unknown-field", {"max_batch_sise": 4}, ["'max_batch_sise'", "unknown field"]),
    ("negative-max-batch-size", {"max_batch_size": -1}, ["'max_batch_size'", "greater than or equal to 0"]),
    ("bad-json", '{"max_batch_size": 4,', ["not valid JSON"]),
    ("not-an-object", [1, 2], ["expected a JSON object, got list"]),
    ("bad-device", {"device": "tpu"}, ["'device'", "'tpu'"]),
    ("two-policies", {"version_policy": {"all": {}, "latest": 1}}, ["version_policy", "latest and all"]),
    ("missing-specific-version", {"version_policy": {"specific": [1, 5]}}, ["version_policy", "[5] not found"]),
    ("wrong-input-names", {"input_names": ["p", "q"]}, ["input_names", "2 names"]),
]


@pytest.mark.parametrize("content,patterns", [b[1:] for b in BAD_CONFIGS], ids=[b[0] for b in BAD_CONFIGS])
def test_a_bad_config_json_fails_only_its_model(repo, content, patterns, capsys):
    cfg_path = write_config(repo, "a", content)

    async def main():
        async with serving(repo) as (c, app):
            assert (await c.get("/v2/health/ready")).status_code == 200  # failed models are reported, not awaited
            idx = await index(c)
            bad = [e for e in idx if e["name"] == "a"]
            assert len(bad) == 1 and bad[0]["state"] == "UNAVAILABLE" and "version" not in bad[0], idx
            reason = bad[0]["reason"]
            # names the file (the full path where the file itself is at fault) and the field (below)
            assert (cfg_path if "input_names" not in patterns[0] else "config.json") in reason, reason
            for p in patterns:
                assert p in reason, (p, reason)
            assert await index(c, ready=True) == [{"name": "b", "version": "3", "state": "READY"}]
            msg = error(await infer(c, "a"), 404)
            assert "'a'" in msg and "unavailable" in msg
            error(await c.get("/v2/models/a"), 404)
            await serves(c, repo, "b", 3, latest=True)
            # an explicit load says why, as a 400
            msg = error(await c.post("/v2/repository/models/a/load"), 400)
            assert "failed to load model 'a'" in msg and patterns[0] in msg
            # fixing the file and loading again serves the model
            os.remove(cfg_path)
            assert (await c.post("/v2/repository/models/a/load")).status_code == 200
            await serves(c, repo, "a", 3, latest=True)

    run(main())
    assert "ember serve:" in capsys.readouterr().err  # the startup failure was printed


def test_a_model_folder_without_versions_is_unavailable(repo):
    os.makedirs(os.path.join(repo, "empty", "notaversion"))

    async def main():
        async with serving(repo) as (c, app):
            entry = [e for e in await index(c) if e["name"] == "empty"]
            assert entry[0]["state"] == "UNAVAILABLE" and "no version folders" in entry[0]["reason"]
            await serves(c, repo, "a", 3, latest=True)

    run(main())


def test_a_version_folder_with_both_model_files_is_an_error_naming_it(repo):
    write_version(repo, "a", 3, seed=13, filename="model.onnx")

    async def main():
        async with serving(repo) as (c, app):
            entry = [e for e in await index(c) if e["name"] == "a"]
            assert entry[0]["state"] == "UNAVAILABLE", entry
            reason = entry[0]["reason"]
            assert os.path.join(os.fspath(repo), "a", "3") in reason and "model.ember and model.onnx" in reason
            await serves(c, repo, "b", 3, latest=True)

    run(main())


# ---- the repository extension: index, load, unload, reload ---------------------------------------------------
def test_unload_and_load(repo):
    async def main():
        async with serving(repo) as (c, app):
            assert (await c.post("/v2/repository/models/a/unload")).status_code == 200
            idx = await index(c)
            assert {"name": "a", "state": "UNAVAILABLE", "reason": "unloaded"} in idx
            assert await index(c, ready=True) == [{"name": "b", "version": "3", "state": "READY"}]
            msg = error(await infer(c, "a"), 404)
            assert "'a'" in msg and "unloaded" in msg
            error(await infer(c, "a", 3), 404)
            error(await c.get("/v2/models/a"), 404)
            error(await c.get("/v2/models/a/ready"), 404)
            error(await c.get("/v2/models/a/config"), 404)
            await serves(c, repo, "b", 3, latest=True)  # the other model is untouched
            # unloading again: not loaded
            msg = error(await c.post("/v2/repository/models/a/unload"), 400)
            assert "not loaded" in msg
            assert (await c.post("/v2/repository/models/a/load")).status_code == 200
            assert ready_versions(await index(c), "a") == ["3"]
            await serves(c, repo, "a", 3, latest=True)

    run(main())


def test_load_and_unload_of_a_model_not_in_the_repository_are_404(repo):
    async def main():
        async with serving(repo) as (c, app):
            msg = error(await c.post("/v2/repository/models/zzz/load"), 404)
            assert "'zzz'" in msg and "a, b" in msg
            msg = error(await c.post("/v2/repository/models/zzz/unload"), 404)
            assert "'zzz'" in msg
            await serves(c, repo, "a", 3, latest=True)
            assert "zzz" not in {e["name"] for e in await index(c)}

    run(main())


def test_reload_picks_up_a_new_version_and_a_new_model(repo):
    async def main():
        async with serving(repo) as (c, app):
            await serves(c, repo, "a", 3, latest=True)
            write_version(repo, "a", 4, seed=14)
            await serves(c, repo, "a", 3, latest=True)  # nothing changes until a load
            assert (await c.post("/v2/repository/models/a/load")).status_code == 200
            await serves(c, repo, "a", 4, latest=True)
            error(await infer(c, "a", 3), 404)  # latest-1 policy: 3 was retired
            assert ready_versions(await index(c), "a") == ["4"]
            # a model added to the repository after startup shows in the index and loads
            write_version(repo, "c", 1, seed=31)
            assert {"name": "c", "state": "UNAVAILABLE", "reason": "not loaded"} in await index(c)
            error(await infer(c, "c"), 404)
            assert (await c.post("/v2/repository/models/c/load")).status_code == 200
            await serves(c, repo, "c", 1, latest=True)
            # a config.json written later applies on the next load
            write_config(repo, "a", {"version_policy": {"all": {}}})
            assert (await c.post("/v2/repository/models/a/load")).status_code == 200
            assert ready_versions(await index(c), "a") == ["1", "2", "3", "4"]
            for v in (1, 2, 3, 4):
                await serves(c, repo, "a", v)

    run(main())


def test_a_failed_reload_keeps_the_loaded_versions_serving(repo):
    async def main():
        async with serving(repo) as (c, app):
            write_config(repo, "a", {"instances": 0})
            msg = error(await c.post("/v2/repository/models/a/load"), 400)
            assert "'instances'" in msg and "config.json" in msg
            assert ready_versions(await index(c), "a") == ["3"]
            await serves(c, repo, "a", 3, latest=True)

    run(main())


def test_load_with_a_config_override(repo):
    async def main():
        async with serving(repo) as (c, app):
            # Triton's load request: parameters.config is config.json's content as a string
            r = await c.post("/v2/repository/models/a/load",
                             json={"parameters": {"config": '{"version_policy": {"specific": [1, 2]}}'}})
            assert r.status_code == 200, r.text
            assert ready_versions(await index(c), "a") == ["1", "2"]
            await serves(c, repo, "a", 2, latest=True)
            await serves(c, repo, "a", 1)
            error(await infer(c, "a", 3), 404)
            # a bad override is a 400 naming the field, and changes nothing
            r = await c.post("/v2/repository/models/a/load", json={"parameters": {"config": {"max_queue_size": 0}}})
            msg = error(r, 400)
            assert "parameters.config" in msg and "'max_queue_size'" in msg
            assert ready_versions(await index(c), "a") == ["1", "2"]
            await serves(c, repo, "a", 2, latest=True)

    run(main())


def test_unload_lets_queued_requests_finish(repo):
    async def main():
        async with serving(repo, ServerConfig(max_batch_size=8, batch_delay_ms=200)) as (c, app):
            pending = asyncio.ensure_future(infer(c, "a"))
            await asyncio.sleep(0.02)  # queued, waiting for company
            assert (await c.post("/v2/repository/models/a/unload")).status_code == 200
            r = await pending
            assert_outputs(result(r), local(vpath(repo, "a", 3), {"x": X}))
            error(await infer(c, "a"), 404)

    run(main())


# ---- renaming, ONNX, files --------------------------------------------------------------------------------------
def test_config_renames_inputs_and_outputs(repo):
    write_config(repo, "a", {"input_names": ["features"], "output_names": ["scores"]})

    async def main():
        async with serving(repo) as (c, app):
            meta = (await c.get("/v2/models/a")).json()
            assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}]
            assert meta["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 4]}]
            cfg = (await c.get("/v2/models/a/config")).json()
            assert [t["name"] for t in cfg["input"]] == ["features"]
            assert [t["name"] for t in cfg["output"]] == ["scores"]
            want = local(vpath(repo, "a", 3), {"x": X})["y"]
            r = await c.post("/v2/models/a/infer", json=json_body({"features": X}, outputs=["scores"]))
            assert_outputs(result(r), {"scores": want})
            body, headers = binary_body({"features": X})
            assert_outputs(result(await c.post("/v2/models/a/infer", content=body, headers=headers)), {"scores": want})
            msg = error(await c.post("/v2/models/a/infer", json=json_body({"x": X})), 400)
            assert "unknown input 'x'" in msg and "features" in msg
            msg = error(await c.post("/v2/models/a/infer", json=json_body({"features": X}, outputs=["y"])), 400)
            assert "unknown output 'y'" in msg and "scores" in msg
            await serves(c, repo, "b", 3, latest=True)

    run(main())


def _ort(path, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))


def test_onnx_model_in_a_repository(repo):
    onnx_path = write_version(repo, "o", 1, seed=51, filename="model.onnx")

    async def main():
        async with serving(repo, ServerConfig(max_batch_size=8, batch_delay_ms=10)) as (c, app):
            meta = (await c.get("/v2/models/o")).json()
            assert meta["platform"] == "onnxruntime_onnx"
            assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]
            assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
            cfg = (await c.get("/v2/models/o/config")).json()
            assert cfg["platform"] == "onnxruntime_onnx" and cfg["backend"] == "onnxruntime"
            assert cfg["max_batch_size"] == 8
            want = _ort(onnx_path, X)
            assert_outputs(result(await infer(c, "o")), want)
            body, headers = binary_body({"x": X}, outputs=["y"])
            assert_outputs(result(await c.post("/v2/models/o/infer", content=body, headers=headers)), want)
            # concurrent requests are batched on ONNX Runtime too
            xs = [rows(1, seed=60 + i) for i in range(6)]
            rs = await asyncio.gather(*(infer(c, "o", x=x) for x in xs))
            for x, r in zip(xs, rs):
                assert_outputs(result(r), _ort(onnx_path, x), exact=False)
            await serves(c, repo, "a", 3, latest=True)

    run(main())


def test_serving_a_list_of_files(tmp_path):
    paths = build_models(tmp_path / "files")

    async def main():
        async with serving([paths["mlp"], paths["mlp_onnx"], paths["pair"]]) as (c, app):
            assert await index(c) == [{"name": n, "version": "1", "state": "READY"}
                                      for n in ("mlp", "mlp_onnx", "pair")]
            assert_outputs(result(await infer(c, "mlp")), local(paths["mlp"], {"x": X}))
            onnx_out = result(await infer(c, "mlp_onnx"))
            assert_outputs(onnx_out, _ort(paths["mlp_onnx"], X))
            # the ONNX export of the program serves (nearly) the same numbers as the program
            np.testing.assert_allclose(onnx_out["y"], local(paths["mlp"], {"x": X})["y"], rtol=1e-5, atol=1e-6)
            a, b = rows(2, 3, seed=1), rows(2, 3, seed=2)
            r = await c.post("/v2/models/pair/infer", json=json_body({"a": a, "b": b}))
            assert_outputs(result(r), local(paths["pair"], {"a": a, "b": b}))
            assert (await c.get("/v2/models/mlp_onnx")).json()["platform"] == "onnxruntime_onnx"
            # unload and load work for files too
            assert (await c.post("/v2/repository/models/pair/unload")).status_code == 200
            error(await c.post("/v2/models/pair/infer", json=json_body({"a": a, "b": b})), 404)
            assert (await c.post("/v2/repository/models/pair/load")).status_code == 200
            assert_outputs(result(await c.post("/v2/models/pair/infer", json=json_body({"a": a, "b": b}))),
                           local(paths["pair"], {"a": a, "b": b}))

    run(main())


def test_bad_paths_are_refused_when_the_app_is_created(tmp_path):
    p = write_version(tmp_path / "r1", "m", 1)
    dup = os.path.join(tmp_path, "other", "model.ember")
    os.makedirs(os.path.dirname(dup))
    shutil.copy(p, dup)
    with pytest.raises(ValueError, match="both be served as model 'model'"):
        create_app([p, dup])
    with pytest.raises(FileNotFoundError, match="no such file"):
        create_app(os.path.join(tmp_path, "missing.ember"))
    txt = tmp_path / "notes.txt"
    txt.write_text("hi")
    with pytest.raises(ValueError, match="not a model file"):
        create_app([p, os.fspath(txt)])


def test_a_file_that_is_not_a_model_is_unavailable_with_the_reason(tmp_path):
    bad = tmp_path / "junk.ember"
    bad.write_bytes(b"this is not an ember archive")
    good = write_version(tmp_path / "r", "m", 1)
    renamed = tmp_path / "mlp.ember"
    shutil.copy(good, renamed)

    async def main():
        async with serving([os.fspath(bad), os.fspath(renamed)]) as (c, app):
            entry = [e for e in await index(c) if e["name"] == "junk"][0]
            assert entry["state"] == "UNAVAILABLE" and os.fspath(bad) in entry["reason"], entry
            assert_outputs(result(await infer(c, "mlp")), local(good, {"x": X}))

    run(main())


# ---- readiness -------------------------------------------------------------------------------------------------
def test_ready_is_503_until_the_startup_loads_finish(repo):
    app = create_app(repo)
    gate = threading.Event()
    repository = app.state.ember.repository
    original = repository._load_versions

    def held(*args, **kwargs):
        assert gate.wait(30)
        return original(*args, **kwargs)

    repository._load_versions = held

    async def main():
        async with serving(repo, app=app, ready=False) as (c, app_):
            try:
                await asyncio.sleep(0.05)
                assert (await c.get("/v2/health/live")).status_code == 200
                assert (await c.get("/v2/health/ready")).status_code == 503
                assert (await c.get("/v2/models/a/ready")).status_code == 503
                msg = error(await infer(c, "a"), 503)
                assert "'a'" in msg and "loading" in msg
                assert {e["state"] for e in await index(c)} == {"LOADING"}
            finally:
                gate.set()
            for _ in range(3000):
                if (await c.get("/v2/health/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.01)
            assert (await c.get("/v2/health/ready")).status_code == 200
            assert (await c.get("/v2/models/a/ready")).status_code == 200
            await serves(c, repo, "a", 3, latest=True)
            await serves(c, repo, "b", 3, latest=True)
        # after shutdown the server is not ready
        assert not app.state.ember.ready

    run(main())


def test_a_request_uploading_during_a_reload_is_served(repo):
    """A reload loads the new versions before the old ones stop, "so no request fails": that must hold
    for a request whose body is still arriving (a slow client) when the swap happens."""
    body = orjson.dumps(json_body({"x": X}))

    async def main():
        async with serving(repo) as (c, app):
            started, resume = asyncio.Event(), asyncio.Event()

            async def slow_body():
                yield body[:20]
                started.set()
                await resume.wait()
                yield body[20:]

            pending = asyncio.ensure_future(c.post("/v2/models/a/infer", content=slow_body(),
                                                   headers={"Content-Type": "application/json"}))
            await asyncio.wait_for(started.wait(), 10)
            write_version(repo, "a", 4, seed=14)
            assert (await c.post("/v2/repository/models/a/load")).status_code == 200
            resume.set()
            r = await pending
            assert r.status_code == 200, r.text
            # answered by whichever version was current; both are right answers
            version = r.json()["model_version"]
            assert version in ("3", "4")
            assert_outputs(result(r), local(vpath(repo, "a", version), {"x": X}))
            await serves(c, repo, "a", 4, latest=True)

    run(main())


def test_an_unexpected_loader_failure_fails_only_its_model(repo, monkeypatch):
    """Whatever a loader raises (here a KeyError, as a runtime bug or a MemoryError would), the model is
    UNAVAILABLE with the reason, the others load, and the server becomes ready."""
    import ember.serve.repository as repository_module

    real = repository_module.load_model

    def load_model(name, *args, **kwargs):
        if name == "a":
            raise KeyError("boom while loading a")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(repository_module, "load_model", load_model)

    async def main():
        async with serving(repo, ready=False) as (c, app):
            for _ in range(300):
                if (await c.get("/v2/health/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.01)
            assert (await c.get("/v2/health/ready")).status_code == 200, await index(c)
            entry = [e for e in await index(c) if e["name"] == "a"][0]
            assert entry["state"] == "UNAVAILABLE" and "boom while loading a" in entry["reason"], entry
            await serves(c, repo, "b", 3, latest=True)
            r = await c.post("/v2/repository/models/a/load")
            assert "boom while loading a" in error(r, r.status_code) and r.status_code in (400, 500)
            await serves(c, repo, "b", 3, latest=True)

    run(main())


def test_a_folder_holding_model_ember_itself_is_one_model_named_after_it(tmp_path):
    """KServe's storage initializer puts a single-file storageUri straight into /mnt/models."""
    mnt = tmp_path / "models"
    p = write_version(tmp_path, "scratch", 1, seed=5)
    os.makedirs(mnt)
    shutil.copy(p, mnt / "model.ember")
    want = local(p, {"x": X})

    async def go(config, name):
        async with serving(mnt, config) as (c, _):
            r = await infer(c, name)
            assert r.status_code == 200, r.text
            assert_outputs(result(r), want)
            assert [m["name"] for m in await index(c)] == [name]

    run(go(ServerConfig(), "models"))
    run(go(ServerConfig(model_name="digits"), "digits"))


def test_model_name_for_several_models_is_refused(repo, tmp_path):
    with pytest.raises(ValueError, match="names a single served model.*model repository"):
        create_app(repo, ServerConfig(model_name="x"))
    a, b = tmp_path / "a.ember", tmp_path / "b.ember"
    shutil.copy(write_version(tmp_path, "a", 1), a)
    shutil.copy(write_version(tmp_path, "b", 1), b)
    with pytest.raises(ValueError, match="2 model files"):
        create_app([a, b], ServerConfig(model_name="x"))
