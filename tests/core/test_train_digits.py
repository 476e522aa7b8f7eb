"""End to end: train on the bundled UCI digits with a fixed seed and a small epoch budget."""
import os
import subprocess
import sys

import numpy as np

import ember
import ember.nn as nn
import ember.nn.functional as F
from ember.data import DataLoader
from ember.data.datasets import digits
from ember.serialize import load

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples"))

from train_digits import evaluate, train  # noqa: E402  (the example a newcomer runs first)


def test_mlp_reaches_96_percent():
    ember.manual_seed(0)
    train_loader = DataLoader(digits("train", flatten=True), batch_size=32, shuffle=True, generator=ember.Generator(0))
    test_loader = DataLoader(digits("test", flatten=True), batch_size=256)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = ember.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        model.train()
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    acc = evaluate(model, test_loader)
    assert acc >= 0.96, f"MLP test accuracy {acc:.4f} < 0.96"


def test_cnn_example_reaches_96_percent():
    _, acc = train(epochs=12, seed=0, progress=False)
    assert acc >= 0.96, f"CNN test accuracy {acc:.4f} < 0.96"


def test_example_script_runs(tmp_path):
    """The script trains, then saves a traced program that loads without the example's classes, its ONNX
    export, which ONNX Runtime runs with the program's results, and the int8 model's program."""
    out_file = tmp_path / "digits_cnn.ember"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "train_digits.py"), "--epochs", "2",
                          "--out", str(out_file)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "test accuracy:" in out.stdout
    assert f"saved the traced model to {out_file}" in out.stdout
    assert f"$ ember info {out_file}" in out.stdout and "logits: float32[batch, 10]" in out.stdout
    assert f"exported it to ONNX: {tmp_path / 'digits_cnn.onnx'}" in out.stdout
    assert "same predicted class for 100.0%" in out.stdout, out.stdout
    assert "int8 (static post-training quantization): test accuracy" in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits_cnn.ember", "digits_cnn.onnx", "digits_cnn_int8.ember",
                                                          "digits_cnn_int8.onnx"]  # nothing else
    prog = load(out_file)
    assert prog.signature["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
    assert prog.signature["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]
    correct = total = 0
    for x, y in DataLoader(digits("test"), batch_size=256):
        correct += (prog(x).argmax(dim=1) == y).sum().item()
        total += len(y)
    assert f"{correct / total:.4f}" == prog.metadata["test_accuracy"]  # the saved model is the trained one
    import onnxruntime

    images, _ = next(iter(DataLoader(digits("test"), batch_size=100)))
    session = onnxruntime.InferenceSession(str(tmp_path / "digits_cnn.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": images.numpy()})[0]
    np.testing.assert_allclose(got, prog(images).numpy(), atol=1e-5, rtol=1e-4)
    int8 = load(tmp_path / "digits_cnn_int8.ember")
    assert "quantized_conv2d" in [n.op for n in int8.graph.nodes]
    assert (int8(images).argmax(dim=1) == prog(images).argmax(dim=1)).float().mean().item() >= 0.95
