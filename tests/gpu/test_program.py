"""Saved programs on "cuda": a .ember file loads onto the device and gives the CPU runtime's outputs, for
float and int8 models; Program.to moves it; inputs are checked; the server runs a model on CUDA by
configuration."""
import json

import numpy as np
import pytest

import ember
from ember import serialize
from tests.reference_models import CNN, MLP

RNG = np.random.default_rng(0)


def _saved(tmp_path, make, example, name):
    ember.manual_seed(0)
    model = make().eval()
    prog = serialize.trace(model, example)
    path = tmp_path / f"{name}.ember"
    prog.save(path)
    return path


@pytest.mark.parametrize("make, shape", [(MLP, (5, 20)), (CNN, (3, 3, 8, 8))], ids=["mlp", "cnn"])
def test_saved_program_runs_on_cuda_like_cpu(tmp_path, make, shape):
    x = ember.from_numpy(RNG.standard_normal(shape).astype(np.float32))
    path = _saved(tmp_path, make, x, "m")
    cpu = serialize.load(path)
    gpu = serialize.load(path, device="cuda")
    assert gpu.device == "cuda:0"
    want = cpu(x).numpy()
    out = gpu(x.cuda())
    assert out.is_cuda
    np.testing.assert_allclose(out.cpu().numpy(), want, rtol=1e-4, atol=1e-5)
    # host inputs are copied to the device; run() is numpy in, numpy out (what the server calls)
    np.testing.assert_allclose(gpu(x).cpu().numpy(), want, rtol=1e-4, atol=1e-5)
    res = gpu.run({gpu.graph.inputs[0]: x.numpy()[:2]})
    np.testing.assert_allclose(res[gpu.graph.outputs[0]], want[:2], rtol=1e-4, atol=1e-5)
    moved = cpu.to("cuda")
    np.testing.assert_allclose(moved(x.cuda()).cpu().numpy(), want, rtol=1e-4, atol=1e-5)
    assert moved.to("cuda") is moved


def test_cuda_input_to_a_cpu_program_is_refused(tmp_path):
    x = ember.from_numpy(RNG.standard_normal((2, 20)).astype(np.float32))
    cpu = serialize.load(_saved(tmp_path, MLP, x, "m"))
    with pytest.raises(TypeError, match="is on cuda:0, but this program runs on cpu"):
        cpu(x.cuda())


def test_int8_program_on_cuda_equals_cpu(tmp_path):
    from ember import quantize as Q
    import ember.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = Q.QuantStub(), Q.DeQuantStub()
            self.conv, self.relu = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(4 * 3 * 3, 5)

        def forward(self, x):
            x = self.pool(self.relu(self.conv(self.quant(x))))
            return self.dequant(self.fc(x.reshape(x.shape[0], -1)))

    ember.manual_seed(0)
    net = Net().eval()
    net.qconfig = Q.default_per_channel_qconfig
    Q.fuse_modules(net, [["conv", "relu"]], inplace=True)
    Q.prepare(net, inplace=True)
    calib = ember.from_numpy(RNG.standard_normal((16, 1, 6, 6)).astype(np.float32))
    with ember.no_grad():
        net(calib)
    Q.convert(net, inplace=True)
    x = calib[:4]
    path = tmp_path / "q.ember"
    serialize.trace(net, x).save(path)
    want = serialize.load(path)(x).numpy()
    got = serialize.load(path, device="cuda")(x.cuda()).cpu().numpy()
    np.testing.assert_array_equal(got, want)


def test_server_runs_a_model_on_cuda_by_configuration(tmp_path):
    x = RNG.standard_normal((2, 20)).astype(np.float32)
    repo = tmp_path / "repo"
    (repo / "mlp" / "1").mkdir(parents=True)
    _saved(tmp_path, MLP, ember.from_numpy(x), "mlp")
    (tmp_path / "mlp.ember").rename(repo / "mlp" / "1" / "model.ember")
    (repo / "mlp" / "config.json").write_text(json.dumps({"device": "cuda", "max_batch_size": 8}))
    want = serialize.load(repo / "mlp" / "1" / "model.ember")(ember.from_numpy(x)).numpy()

    from tests.serve.models import run, serving

    async def go():
        async with serving(repo) as (c, _app):
            cfg = (await c.get("/v2/models/mlp/config")).json()
            body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
            return cfg, await c.post("/v2/models/mlp/infer", json=body)

    cfg, r = run(go())
    assert cfg["instance_group"][0]["kind"] == "KIND_GPU"
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(out["shape"]), want, rtol=1e-4, atol=1e-5)


def test_tracing_a_model_on_cuda(tmp_path):
    x = ember.from_numpy(RNG.standard_normal((3, 20)).astype(np.float32))
    ember.manual_seed(0)
    model = MLP().eval()
    want = model(x).detach().numpy()
    prog = serialize.trace(model.cuda(), x.cuda())
    assert prog.device == "cuda:0" and all(isinstance(v, np.ndarray) for v in prog.graph.constants.values())
    np.testing.assert_allclose(prog(x.cuda()).cpu().numpy(), want, rtol=1e-4, atol=1e-5)
    prog.save(tmp_path / "m.ember")  # the file holds host constants: it loads on either device
    np.testing.assert_allclose(serialize.load(tmp_path / "m.ember")(x).numpy(), want, rtol=1e-4, atol=1e-5)


def test_quantizing_a_cuda_model_says_to_quantize_on_the_cpu():
    from ember import quantize as Q
    import ember.nn as nn

    model = nn.Sequential(Q.QuantStub(), nn.Linear(4, 3), Q.DeQuantStub()).cuda().eval()
    model.qconfig = Q.default_qconfig
    for call in (lambda: Q.quantize_dynamic(model, {nn.Linear}), lambda: Q.prepare(model),
                 lambda: Q.prepare_qat(model.train()), lambda: Q.convert(model)):
        with pytest.raises(RuntimeError, match=r"the model is on cuda:0 .*ember.quantize works on CPU models"):
            call()
    q = Q.quantize_dynamic(model.cpu().eval(), {nn.Linear}).to("cuda")
    x = ember.from_numpy(RNG.standard_normal((2, 4)).astype(np.float32))
    np.testing.assert_array_equal(q(x.cuda()).cpu().numpy(), q.cpu()(x).numpy())
