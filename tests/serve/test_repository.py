"""The model repository over ASGI: version folders and version policies, config.json (bad ones fail
alone, with the file and the field named), and the repository extension (index / load / unload / reload)."""
import asyncio
import os

import pytest

from ember.serve import ServerConfig

from .models import assert_outputs, error, local, result, run, serving, write_config, write_version
from .repo_helpers import X, index, infer, ready_versions, serves, vpath


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
