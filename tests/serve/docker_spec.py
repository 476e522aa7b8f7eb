"""Readers of docker/ for the lint tests: the Dockerfile's stages and instructions, the env table of
docker/README.md, the YAML manifests and their containers and ports."""
import json
import os
import re
import shlex

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML parses the Kubernetes manifests")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKER = os.path.join(ROOT, "docker")
PORT = 8080
LIVE, READY, METRICS = "/v2/health/live", "/v2/health/ready", "/metrics"
MANIFESTS = {  # every YAML file under docker/ and the (apiVersion, kind) of each of its documents
    "kserve/servingruntime.yaml": [("serving.kserve.io/v1alpha1", "ClusterServingRuntime")],
    "kserve/inferenceservice.yaml": [("serving.kserve.io/v1beta1", "InferenceService")],
    "k8s/deployment.yaml": [("apps/v1", "Deployment")],
    "k8s/service.yaml": [("v1", "Service")],
    "k8s/hpa.yaml": [("autoscaling/v2", "HorizontalPodAutoscaler")],
}


# ---- parsing --------------------------------------------------------------------------------
def read(rel):
    with open(os.path.join(DOCKER, rel), encoding="utf-8") as f:
        return f.read()


def dockerfile_stages(text):
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    stages, buf = [], ""
    for raw in text.splitlines():
        s = raw.strip()
        if not s or s.startswith("#"):  # Docker drops comment and blank lines, also inside continuations
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        instr, _, rest = (buf + s).partition(" ")
        buf = ""
        if instr.upper() == "FROM":
            stages.append([])
        assert stages, f"instruction {instr} before the first FROM"
        stages[-1].append((instr.upper(), rest.strip()))
    assert not buf, "the Dockerfile ends inside a continuation line"
    return stages


def instructions(stage, name):
    return [args for instr, args in stage if instr == name]


def env_of(stage):
    env = {}
    for args in instructions(stage, "ENV"):
        words = shlex.split(args)
        if "=" not in words[0]:  # legacy form: ENV KEY value
            env[words[0]] = args.split(None, 1)[1]
        else:
            env.update(w.split("=", 1) for w in words)
    return env


def exec_form(args):
    """The JSON array of an exec-form ENTRYPOINT/CMD; fails for the shell form."""
    try:
        argv = json.loads(args)
    except ValueError:
        pytest.fail(f"not exec form (a JSON array): {args}")
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv), args
    return argv


def readme_env_table():
    """docker/README.md's configuration table: variable -> default."""
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \| `([^`]*)` \| [^|]+\|$", read("README.md"), flags=re.M)
    assert rows, "docker/README.md has no | `VAR` | `default` | meaning | table"
    return dict(rows)


def manifests():
    return {rel: list(yaml.safe_load_all(read(rel))) for rel in MANIFESTS}


def one(rel):
    (doc,) = manifests()[rel]
    return doc


def pyproject():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def container_of(deployment):
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def resolve_port(container, port):
    """A probe's or Service's port (a number or a named container port) as a number."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    assert port in named, f"port {port!r} names no container port ({sorted(named)})"
    return named[port]


def walk(node):
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from walk(child)


def walk_env(doc):
    for node in walk(doc):
        if isinstance(node, dict) and isinstance(node.get("env"), list):
            yield from node["env"]


def final_stage():
    return dockerfile_stages(read("Dockerfile"))[-1]
