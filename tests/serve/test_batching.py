"""Dynamic batching over ASGI: concurrent requests share executions, each gets its own rows back,
shapes that cannot be concatenated are kept apart, a full queue or a short per-request timeout is a 503,
and a bad request batched with good ones fails alone."""
import asyncio

import numpy as np
import pytest

from ember.serve import ServerConfig

from .models import assert_outputs, error, json_body, local, metric, result, rows, run, serving


def spy_batches(app, model, version="1"):
    """Record, per execution of ``model``, the input shapes of the requests batched into it."""
    b = app.state.ember.repository.get(model, version)
    seen, original = [], b._execute

    def execute(batch):
        seen.append([{k: v.shape for k, v in it.inputs.items()} for it in batch])
        return original(batch)

    b._execute = execute
    return seen


def executions(app, model):
    return (metric(app, "ember_execution_count_total", model=model, version="1"),
            metric(app, "ember_inference_count_total", model=model, version="1"))


async def infer_all(c, models, name, xs, exact=False):
    """Send every x concurrently; each response must be that x's own local result."""
    rs = await asyncio.gather(*(c.post(f"/v2/models/{name}/infer", json=json_body({"x": x})) for x in xs))
    for x, r in zip(xs, rs):
        assert_outputs(result(r), local(models[name], {"x": x}), exact=exact)


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(models):
    xs = [rows(1, seed=100 + i) for i in range(16)]

    async def main():
        async with serving(models["mlp"], ServerConfig(max_batch_size=8, batch_delay_ms=20)) as (c, app):
            seen = spy_batches(app, "mlp")
            await infer_all(c, models, "mlp", xs)
            n_exec, n_inf = executions(app, "mlp")
            assert n_inf == 16 and n_exec < n_inf, (n_exec, n_inf)
            assert len(seen) == n_exec
            assert all(sum(s["x"][0] for s in batch) <= 8 for batch in seen), seen  # max_batch_size rows
            assert max(len(batch) for batch in seen) > 1
            assert metric(app, "ember_batch_size_count", model="mlp", version="1") == n_exec
            assert metric(app, "ember_request_success_total", model="mlp", version="1") == 16
            # requests of several rows share executions too, and still get their own rows
            multi = [rows(k, seed=200 + k) for k in (1, 2, 3, 2)]
            await infer_all(c, models, "mlp", multi)
            assert max(len(batch) for batch in seen[int(n_exec):]) > 1

    run(main())


def test_requests_with_different_non_batch_shapes_are_not_batched_together(models):
    xs = [np.random.default_rng(i).standard_normal((1, 3 if i % 2 else 5, 4)).astype(np.float32) for i in range(8)]

    async def main():
        async with serving(models["seq"], ServerConfig(max_batch_size=8, batch_delay_ms=20)) as (c, app):
            seen = spy_batches(app, "seq")
            await infer_all(c, models, "seq", xs)
            for batch in seen:
                assert len({s["x"][1:] for s in batch}) == 1, seen  # one seq length per execution
            assert max(len(batch) for batch in seen) > 1, seen  # but same-shape requests did share

    run(main())


def test_a_non_batchable_model_runs_requests_one_by_one(models):
    xs = [rows(2, seed=300 + i) for i in range(6)]

    async def main():
        async with serving(models["fixed"], ServerConfig(max_batch_size=8, batch_delay_ms=20)) as (c, app):
            assert not app.state.ember.repository.get("fixed").batching
            seen = spy_batches(app, "fixed")
            await infer_all(c, models, "fixed", xs, exact=True)
            assert [len(b) for b in seen] == [1] * 6
            assert executions(app, "fixed") == (6, 6)

    run(main())


def test_batching_off_with_max_batch_size_0(models):
    xs = [rows(1, seed=400 + i) for i in range(4)]

    async def main():
        async with serving(models["mlp"], ServerConfig(max_batch_size=0, batch_delay_ms=20)) as (c, app):
            seen = spy_batches(app, "mlp")
            await infer_all(c, models, "mlp", xs, exact=True)
            assert [len(b) for b in seen] == [1] * 4

    run(main())


def test_full_queue_is_503_overloaded(models):
    xs = [rows(1, seed=500 + i) for i in range(6)]

    async def main():
        cfg = ServerConfig(max_batch_size=8, batch_delay_ms=300, max_queue_size=1)
        async with serving(models["mlp"], cfg) as (c, app):
            rs = await asyncio.gather(*(c.post("/v2/models/mlp/infer", json=json_body({"x": x})) for x in xs))
            codes = [r.status_code for r in rs]
            assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
            for x, r in zip(xs, rs):
                if r.status_code == 200:
                    assert_outputs(result(r), local(models["mlp"], {"x": x}))
                else:
                    msg = error(r, 503)
                    assert "overloaded" in msg and "max_queue_size 1" in msg, msg
            assert metric(app, "ember_request_failure_total", model="mlp", version="1", code="503") == codes.count(503)
            # once the queue drains the server serves again
            x = rows(1, seed=599)
            assert_outputs(result(await c.post("/v2/models/mlp/infer", json=json_body({"x": x}))),
                           local(models["mlp"], {"x": x}))

    run(main())


def test_per_request_timeout_shorter_than_the_batch_delay_is_503(models):
    x = rows(1, seed=600)

    async def main():
        async with serving(models["mlp"], ServerConfig(max_batch_size=8, batch_delay_ms=300)) as (c, app):
            seen = spy_batches(app, "mlp")
            # Triton's "timeout" parameter is in microseconds: 2 ms here, while the batcher waits 300 ms
            r = await c.post("/v2/models/mlp/infer", json=json_body({"x": x}, parameters={"timeout": 2000}))
            msg = error(r, 503)
            assert "timed out" in msg and "0.002 s" in msg, msg
            await asyncio.sleep(0.35)  # the expired request is dropped from the queue, never executed
            assert seen == []
            # a timeout long enough is fine
            r = await c.post("/v2/models/mlp/infer", json=json_body({"x": x}, parameters={"timeout": 5_000_000}))
            assert_outputs(result(r), local(models["mlp"], {"x": x}))
            assert len(seen) == 1

    run(main())


def test_server_request_timeout_is_503(models):
    x = rows(1, seed=601)

    async def main():
        cfg = ServerConfig(max_batch_size=8, batch_delay_ms=300, request_timeout_s=0.01)
        async with serving(models["mlp"], cfg) as (c, app):
            msg = error(await c.post("/v2/models/mlp/infer", json=json_body({"x": x})), 503)
            assert "timed out after 0.01 s" in msg
            # a per-request timeout cannot lengthen the server's
            r = await c.post("/v2/models/mlp/infer", json=json_body({"x": x}, parameters={"timeout": 10_000_000}))
            assert "timed out after 0.01 s" in error(r, 503)

    run(main())


def test_a_request_that_fails_in_a_batch_fails_alone(models):
    """An embedding id out of range is only found when the model runs, i.e. after the request was batched
    with others: the batch is retried request by request, so only the bad request fails."""
    ids = [np.array([[i, (i + 1) % 10, (i + 2) % 10]], dtype=np.int64) for i in range(5)]
    ids[2] = np.array([[1, 99, 2]], dtype=np.int64)

    async def main():
        async with serving(models["embed"], ServerConfig(max_batch_size=8, batch_delay_ms=50)) as (c, app):
            seen = spy_batches(app, "embed")
            rs = await asyncio.gather(*(c.post("/v2/models/embed/infer", json=json_body({"i": i})) for i in ids))
            assert [len(b) for b in seen] == [5], seen  # all five went into one execution
            for k, (i, r) in enumerate(zip(ids, rs)):
                if k != 2:
                    assert_outputs(result(r), local(models["embed"], {"i": i}), exact=False)
            assert rs[2].status_code >= 400  # 400 expected: see test_app_errors' out-of-range id test
            assert "index 99 is out of range" in error(rs[2], rs[2].status_code)
            # and the server keeps batching
            rs = await asyncio.gather(*(c.post("/v2/models/embed/infer", json=json_body({"i": i}))
                                        for i in ids[:2] + ids[3:]))
            for i, r in zip(ids[:2] + ids[3:], rs):
                assert_outputs(result(r), local(models["embed"], {"i": i}), exact=False)

    run(main())


def test_a_request_whose_inputs_disagree_on_the_batch_dim_fails_alone(models):
    good = [(rows(1, 3, seed=700 + i), rows(1, 3, seed=800 + i)) for i in range(4)]
    bad = (rows(2, 3, seed=900), rows(3, 3, seed=901))

    async def main():
        async with serving(models["pair"], ServerConfig(max_batch_size=8, batch_delay_ms=50)) as (c, app):
            reqs = [json_body({"a": a, "b": b}) for a, b in good[:2]] + [json_body({"a": bad[0], "b": bad[1]})] + \
                   [json_body({"a": a, "b": b}) for a, b in good[2:]]
            rs = await asyncio.gather(*(c.post("/v2/models/pair/infer", json=q) for q in reqs))
            msg = error(rs[2], 400)
            assert "batch" in msg, msg
            for (a, b), r in zip(good, rs[:2] + rs[3:]):
                assert_outputs(result(r), local(models["pair"], {"a": a, "b": b}), exact=False)

    run(main())


def test_inputs_that_disagree_on_the_batch_dim_cannot_corrupt_a_neighbour(models):
    """Two bad requests whose row counts cancel out (a has 2 rows and b 1, then a 1 and b 2) concatenate
    into a batch the model accepts; the good request between them must still get its own result and the
    bad ones a 400, as they get when sent alone."""
    a1, b1 = rows(2, 3, seed=1000), rows(1, 3, seed=1001)
    a2, b2 = rows(1, 3, seed=1002), rows(1, 3, seed=1003)  # the good one
    a3, b3 = rows(1, 3, seed=1004), rows(2, 3, seed=1005)

    async def main():
        async with serving(models["pair"], ServerConfig(max_batch_size=8, batch_delay_ms=50)) as (c, app):
            error(await c.post("/v2/models/pair/infer", json=json_body({"a": a1, "b": b1})), 400)  # alone: 400
            rs = await asyncio.gather(*(c.post("/v2/models/pair/infer", json=json_body({"a": a, "b": b}))
                                        for a, b in ((a1, b1), (a2, b2), (a3, b3))))
            assert_outputs(result(rs[1]), local(models["pair"], {"a": a2, "b": b2}), exact=False)
            error(rs[0], 400)
            error(rs[2], 400)

    run(main())


def test_a_request_cancelled_while_queued_is_not_counted_as_a_success(models):
    """A request whose client goes away (its task is cancelled) while it waits for a batch is dropped
    from the queue without running, and must not show up as a 200 in the metrics."""
    async def main():
        async with serving(models["mlp"], ServerConfig(max_batch_size=8, batch_delay_ms=300)) as (c, app):
            seen = spy_batches(app, "mlp")
            task = asyncio.ensure_future(c.post("/v2/models/mlp/infer", json=json_body({"x": rows(1, seed=1)})))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.35)  # past the batch delay: the cancelled request was not executed
            assert seen == []
            assert metric(app, "ember_request_success_total", model="mlp", version="1") == 0
            x = rows(1, seed=2)
            assert_outputs(result(await c.post("/v2/models/mlp/infer", json=json_body({"x": x}))),
                           local(models["mlp"], {"x": x}))
            assert metric(app, "ember_request_success_total", model="mlp", version="1") == 1

    run(main())
