import os, sys, time, statistics
from collections import defaultdict
sys.path.insert(0, "benchmarks")
import numpy as np
import ember
from ember.ops import registry
from workloads import ember_model, batches
name = sys.argv[1] if len(sys.argv) > 1 else "cnn"
B = 64 if name == "cnn" else 128
ember.manual_seed(0)
m = ember_model(name)
opt = ember.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
data = list(zip(*batches(name, B, 4)))
tot = defaultdict(float); cnt = defaultdict(int)
on = [False]
def wrap(opname, fn):
    def f(*a, **k):
        if not on[0]: return fn(*a, **k)
        t0 = time.perf_counter(); r = fn(*a, **k); tot[opname] += time.perf_counter() - t0; cnt[opname] += 1; return r
    return f
for op in registry._REGISTRY.values():
    if "cpu" in op.kernels: op.kernels["cpu"] = wrap(op.name, op.kernels["cpu"])
import ember.nn.functional as F
def step(x, y):
    opt.zero_grad(); loss = F.cross_entropy(m(x), y); loss.backward(); opt.step()
xs = [(ember.tensor(x), ember.tensor(y)) for x, y in data]
for i in range(10): step(*xs[i % 4])
N = 40
steps = []
on[0] = True
for i in range(N):
    t0 = time.perf_counter(); step(*xs[i % 4]); steps.append(time.perf_counter() - t0)
print("step median ms", round(statistics.median(steps) * 1e3, 2), "mean", round(sum(steps)/N*1e3, 2))
for k in sorted(tot, key=lambda k: -tot[k]):
    print(f"{k:28s} {tot[k]/N*1e3:7.3f} ms/step  calls/step {cnt[k]/N:.0f}")
print("sum kernels", round(sum(tot.values())/N*1e3, 2))
