"""Compile ember's common inference kernels into $NUMBA_CACHE_DIR while the image is built.

numba compiles a kernel the first time it runs, so a fresh container would compile while it warms
its models, before it reports ready. Running small float and int8 MLP and CNN programs here (the
serve path: trace, save, load, call) stores the machine code in the image; the server then loads it
from disk. numba keys each cache entry by CPU model: on a node whose CPU differs from the build
machine's, numba compiles once more into the same (writable) directory.
"""
import os
import tempfile
import time

import ember
import ember.nn as nn
import ember.quantize as Q
from ember.serialize import load, trace

BATCHES = (1, 64)  # small and large batches reach both the serial and the parallel kernel variants


def mlp():
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()


def cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),  # multi-channel input: other layout kernels
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()


def cnn_int8():
    model = Q.fuse_modules(cnn(), [["0", "1"], ["3", "4"]])
    return Q.quantize_static(model, [ember.randn(16, 1, 8, 8) for _ in range(2)], progress=False)


def models():
    return [("mlp", mlp(), (64,)), ("cnn", cnn(), (1, 8, 8)),
            ("mlp_int8", Q.quantize_dynamic(mlp()), (64,)), ("cnn_int8", cnn_int8(), (1, 8, 8))]


def main() -> None:
    ember.manual_seed(0)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, shape in models():
            path = os.path.join(tmp, f"{name}.ember")
            trace(model, ember.randn(2, *shape)).save(path)
            prog = load(path)
            for batch in BATCHES:
                prog(ember.randn(batch, *shape))
    print(f"prewarm: numba cache {os.environ.get('NUMBA_CACHE_DIR')} filled in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
