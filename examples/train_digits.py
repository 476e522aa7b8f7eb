"""Train a small CNN on the bundled UCI handwritten digits with ember, PyTorch-style.

    python examples/train_digits.py [--epochs 15] [--batch-size 32] [--lr 0.05] [--seed 0] [--out digits_cnn.ember]
                                    [--port 8000] [--no-serve]

Prints a progress bar per epoch (loss, accuracy), then the test accuracy and the time taken. The trained
model is then traced and saved as a ``.ember`` program (``ember info digits_cnn.ember`` describes it;
``ember.serialize.load`` runs it without this file's classes) and exported to ONNX beside it
(``digits_cnn.onnx``), which is checked against ember in ONNX Runtime when that is installed. Last, the
model is quantized to int8 (conv+relu fused, static post-training quantization calibrated on 500
training images) and saved as ``digits_cnn_int8.ember`` / ``.onnx``; fp32 and int8 accuracy and file
sizes are printed side by side. Last of all, both programs are served over HTTP with ``ember serve``'s
server (KServe V2 protocol, so tritonclient and KServe work too) and a ``curl`` command that classifies a
test image is printed; Ctrl-C stops the server (``--no-serve`` skips this step).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import time

from tqdm import tqdm

import ember
import ember.nn as nn
import ember.nn.functional as F
from ember.cli.main import describe, format_info
from ember.data import DataLoader
from ember.data.datasets import digits
import ember.quantize as Q
from ember.serialize import load, trace


class DigitsCNN(nn.Module):
    """Two conv blocks and a linear classifier for 1x8x8 images."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(32 * 2 * 2, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def evaluate(model, loader, device="cpu"):
    model.eval()
    correct = total = 0
    with ember.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            correct += (model(x).argmax(dim=1) == y).sum().item()
            total += len(y)
    return correct / total


def train(epochs=15, batch_size=32, lr=0.05, seed=0, progress=True, device="cpu"):
    ember.manual_seed(seed)
    train_set, test_set = digits("train"), digits("test")
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=ember.Generator(seed))
    test_loader = DataLoader(test_set, batch_size=256)
    model = DigitsCNN().to(device)
    opt = ember.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = ember.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for epoch in range(epochs):
        model.train()
        seen = correct = 0
        loss_sum = 0.0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not progress)
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n = len(y)
            seen += n
            loss_sum += loss.item() * n
            correct += (logits.argmax(dim=1) == y).sum().item()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        sched.step()
        if progress:
            tqdm.write(f"epoch {epoch + 1:2d}  loss {loss_sum / seen:.4f}  train acc {correct / seen:.4f}")
    acc = evaluate(model, test_loader, device)
    return model.cpu(), acc  # traced, exported and quantized on the CPU


def save_program(model, path, accuracy):
    """Trace the trained model (eval mode, batch size symbolic) and save it as a .ember program."""
    model.eval()
    example, _ = next(iter(DataLoader(digits("test"), batch_size=2)))
    program = trace(model, example, input_names=["image"], output_names=["logits"],
                    metadata={"task": "UCI digits, 1x8x8 images -> 10 class logits",
                              "test_accuracy": f"{accuracy:.4f}"})
    program.save(path)
    return program, os.path.abspath(path)


def check_in_onnxruntime(program, onnx_path) -> str:
    """Run the ONNX file in ONNX Runtime on the test images and compare with the ember program."""
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime is not installed (pip install onnxruntime): the ONNX file was not run"
    images, _ = next(iter(DataLoader(digits("test"), batch_size=512)))
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": images.numpy()})[0]
    want = program(images).numpy()
    same = (got.argmax(1) == want.argmax(1)).mean()
    return (f"ONNX Runtime {onnxruntime.__version__} on {len(images)} test images: max |difference| "
            f"{abs(got - want).max():.2e}, same predicted class for {same:.1%}")


def quantize_int8(model, path):
    """Static int8 post-training quantization: fuse conv+relu, calibrate on 500 training images, convert;
    save the traced int8 program and its ONNX (QDQ) export. Returns (int8 model, test accuracy, .ember path)."""
    model.eval()
    fused = Q.fuse_modules(model, [["features.0", "features.1"], ["features.3", "features.4"]])
    fused.qconfig = Q.get_default_qconfig("x86")  # histogram activations, per-channel int8 weights
    calib = DataLoader(digits("train"), batch_size=100)
    int8 = Q.quantize_static(fused, calib, num_batches=5, progress=False)
    accuracy = evaluate(int8, DataLoader(digits("test"), batch_size=256))
    example, _ = next(iter(DataLoader(digits("test"), batch_size=2)))
    program = trace(int8, example, input_names=["image"], output_names=["logits"],
                    metadata={"task": "UCI digits, 1x8x8 images -> 10 class logits",
                              "quantization": "int8 static post-training (x86 qconfig, 500 calibration images)",
                              "test_accuracy": f"{accuracy:.4f}"})
    program.save(path)
    program.to_onnx(os.path.splitext(path)[0] + ".onnx")
    return int8, accuracy, os.path.abspath(path)


def serve(paths, port):
    """Serve the saved programs until Ctrl-C; once ready, print a curl request for one test image."""
    from ember.serve import ServerConfig, run

    x, y = next(iter(DataLoader(digits("test"), batch_size=1)))
    request = {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                           "data": x.numpy().ravel().tolist()}]}
    with open("digit_request.json", "w") as f:
        json.dump(request, f)
    model = os.path.splitext(os.path.basename(paths[0]))[0]
    url = f"http://127.0.0.1:{port}"
    local = int(load(paths[0])(x).numpy().argmax())  # what the server's answer must agree with

    def ready(state):
        from ember.serve.server import banner

        print(banner(state, url))
        print(f"\nclassify the first test image (label {y.item()}; run locally, the saved model predicts {local}: "
              f"the argmax of the server's 10 logits):\n"
              f"  curl -s {url}/v2/models/{model}/infer -H 'Content-Type: application/json' -d @digit_request.json\n"
              f"the int8 model: .../v2/models/{model}_int8/infer; metadata: curl -s {url}/v2/models/{model}; "
              f"API docs: {url}/docs\nCtrl-C stops the server.", flush=True)

    run(paths, ServerConfig(port=port), on_ready=ready)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="digits_cnn.ember", help="where to save the traced model")
    ap.add_argument("--port", type=int, default=8000, help="port of the demo server on 127.0.0.1")
    ap.add_argument("--no-serve", action="store_true", help="stop after saving, exporting and quantizing")
    ap.add_argument("--device", default="cpu", help="train on 'cpu' or 'cuda' (needs ember[cuda] and a GPU)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    model, acc = train(args.epochs, args.batch_size, args.lr, args.seed, device=args.device)
    print(f"test accuracy: {acc:.4f}  ({time.perf_counter() - t0:.1f} s, ember {ember.__version__})")
    program, saved = save_program(model, args.out, acc)
    print(f"saved the traced model to {saved}")
    onnx_path = os.path.splitext(saved)[0] + ".onnx"
    program.to_onnx(onnx_path)
    print(f"exported it to ONNX: {onnx_path}")
    print(check_in_onnxruntime(program, onnx_path))
    int8_path = os.path.splitext(saved)[0] + "_int8.ember"
    int8, acc8, int8_path = quantize_int8(model, int8_path)
    size32, size8 = os.path.getsize(saved), os.path.getsize(int8_path)
    print(f"int8 (static post-training quantization): test accuracy {acc8:.4f} vs fp32 {acc:.4f}; "
          f"{int8_path}: {size8 / 1024:.1f} KiB vs {size32 / 1024:.1f} KiB fp32 ({size8 / size32:.2f}x); "
          f"ONNX (QDQ) beside it")
    print(f"\n$ ember info {shlex.quote(args.out)}")
    print(format_info(describe(saved)))
    if not args.no_serve:
        print(f"\nserving {os.path.basename(saved)} and {os.path.basename(int8_path)} (ember serve --demo does the same)")
        serve([saved, int8_path], args.port)


if __name__ == "__main__":
    main()
