"""End to end: train on the bundled UCI digits with a fixed seed and a small epoch budget."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

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


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_until_served(cmd, cwd, timeout=600):
    """Run the README's main job until its server is up; return (process, stdout so far, curl command)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:  # the script prints its curl command once the server answers
        lines.append(line)
        if "Ctrl-C stops the server." in line or time.monotonic() > deadline:
            break
    out = "".join(lines)
    curl = [ln.strip() for ln in lines if ln.strip().startswith("curl -s ")]
    return proc, out, curl[0] if curl else None


def test_example_script_runs(tmp_path):
    """The README's main job: trains, saves a traced program that loads without the example's classes, its ONNX
    export, which ONNX Runtime runs with the program's results, and the int8 model's program; then serves both
    and prints a curl command that works. SIGTERM stops the server with exit status 0."""
    out_file = tmp_path / "digits_cnn.ember"
    proc, out, curl = _run_until_served([sys.executable, os.path.join(ROOT, "examples", "train_digits.py"),
                                         "--epochs", "2", "--out", str(out_file), "--port", str(_free_port())],
                                        cwd=tmp_path)
    try:
        if curl is None:  # the script ended (or stalled) before serving: show why
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise AssertionError(f"no curl command printed\n--- stdout ---\n{out}\n--- stderr ---\n{proc.stderr.read()}")
        if shutil.which("curl"):  # the printed command itself, run by a shell where the script ran, as pasted
            answer = subprocess.run(curl, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=30)
            assert answer.returncode == 0, answer.stderr
            reply = json.loads(answer.stdout)
        else:  # no curl here: the same request (URL and body file taken from the command) over httpx
            import httpx

            url, body = curl.split()[2], (tmp_path / curl.split("@")[-1]).read_bytes()
            reply = httpx.post(url, content=body, headers={"Content-Type": "application/json"}).json()
        assert reply["model_name"] == "digits_cnn" and reply["outputs"][0]["shape"] == [1, 10], reply
        logits = reply["outputs"][0]["data"]
        local = int(re.search(r"the saved model predicts (\d+)", out).group(1))
        assert logits.index(max(logits)) == local, (logits, local)  # the server answers as the file does locally
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    assert rc == 0, proc.stderr.read()
    assert "test accuracy:" in out
    assert f"saved the traced model to {out_file}" in out
    assert f"$ ember info {out_file}" in out and "logits: float32[batch, 10]" in out
    assert f"exported it to ONNX: {tmp_path / 'digits_cnn.onnx'}" in out
    assert "same predicted class for 100.0%" in out, out
    assert "int8 (static post-training quantization): test accuracy" in out
    assert "digits_cnn_int8 v1 [ember_program" in out  # the banner lists both served models
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digit_request.json", "digits_cnn.ember", "digits_cnn.onnx",
                                                          "digits_cnn_int8.ember", "digits_cnn_int8.onnx"]
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
