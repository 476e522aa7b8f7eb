"""Where models come from and when they serve, over ASGI: renamed inputs and outputs, .onnx models on ONNX
Runtime, lists of files, a folder holding model.ember itself, --model-name, and readiness that waits for the
startup loads (and reloads that happen while a request uploads)."""
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
from .repo_helpers import X, index, infer, serves, vpath


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
