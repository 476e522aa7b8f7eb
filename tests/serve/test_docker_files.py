"""Lint of docker/ without a Docker engine or a cluster: the Dockerfile, the KServe and Kubernetes
manifests and docker/README.md must agree with each other and with the server (its routes, its CLI's
environment variables and defaults), and the image's HEALTHCHECK command is run against a stub server."""
import fnmatch
import http.server
import json
import os
import re
import runpy
import shlex
import socket
import subprocess
import sys
import threading

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


@pytest.fixture(scope="module")
def final():
    return dockerfile_stages(read("Dockerfile"))[-1]


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


# ---- the Dockerfile ------------------------------------------------------------------------
def test_dockerfile_builds_a_wheel_and_installs_it_in_a_slim_image():
    stages = dockerfile_stages(read("Dockerfile"))
    assert len(stages) == 2
    build, runtime = stages
    assert instructions(build, "FROM") == ["python:3.11-slim AS build"]
    assert instructions(runtime, "FROM") == ["python:3.11-slim"]
    assert any("pip wheel" in r and "--no-deps" in r for r in instructions(build, "RUN"))
    installs = [r for r in instructions(runtime, "RUN") if "pip install" in r]
    assert len(installs) == 1 and "--no-cache-dir" in installs[0]
    assert "from=build" in installs[0] and "/wheels/ember-*.whl" in installs[0]


def test_dockerfile_copies_every_package_of_the_distribution():
    """A package folder missing from the build stage would give a wheel (and image) without it."""
    build = dockerfile_stages(read("Dockerfile"))[0]
    copied = set()
    for args in instructions(build, "COPY"):
        words = [w for w in args.split() if not w.startswith("--")]
        copied.update(w.rstrip("/") for w in words[:-1])
    meta = pyproject()
    needed = {"pyproject.toml", meta["project"]["readme"], *meta["tool"]["setuptools"]["package-dir"].values()}
    assert needed <= copied, f"not copied into the build stage: {sorted(needed - copied)}"


def context_sources():
    """Paths the build reads from the context: COPY sources and RUN bind mounts without from=."""
    sources = []
    for stage in dockerfile_stages(read("Dockerfile")):
        for instr, args in stage:
            if instr in ("COPY", "ADD") and "--from=" not in args:
                sources += [w for w in args.split() if not w.startswith("--")][:-1]
            for opts in re.findall(r"--mount=(\S+)", args) if instr == "RUN" else ():
                kv = dict(o.split("=", 1) for o in opts.split(",") if "=" in o)
                if kv.get("type") == "bind" and "from" not in kv:
                    sources.append(kv["source"])
    return sources


def test_dockerfile_context_paths_exist():
    sources = context_sources()
    assert "docker/prewarm.py" in sources
    missing = [s for s in sources if not os.path.exists(os.path.join(ROOT, s))]
    assert not missing, f"the Dockerfile reads {missing} from the build context, which the repository lacks"


def dockerignored(path, patterns):
    """Whether .dockerignore excludes ``path`` or a folder above it (last matching pattern wins)."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip().lstrip("/")
        pat = pat[2:] if pat.startswith("./") else pat
        alts = {pat, pat[3:]} if pat.startswith("**/") else {pat}
        if any(fnmatch.fnmatchcase(p, a) for p in prefixes for a in alts):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_build_reads():
    path = os.path.join(ROOT, ".dockerignore")
    if not os.path.exists(path):
        pytest.skip("no .dockerignore at the repository root (the whole tree is sent as build context)")
    with open(path, encoding="utf-8") as f:
        patterns = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    dropped = [s for s in context_sources() if dockerignored(s, patterns)]
    assert not dropped, f".dockerignore excludes {dropped}, which the Dockerfile copies"


def test_dockerignore_matcher():
    pats = ["**/__pycache__", ".git", "tests", "*.md", "!README.md"]
    assert dockerignored("core/ops/__pycache__", pats) and dockerignored(".git/HEAD", pats)
    assert dockerignored("CHANGES.md", pats) and not dockerignored("README.md", pats)
    assert not dockerignored("core", pats) and not dockerignored("docker/prewarm.py", pats)


def test_dockerfile_runs_as_a_non_root_user(final):
    users = instructions(final, "USER")
    assert users, "the final stage has no USER: the server would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user == "1000", "a numeric uid lets Kubernetes' runAsNonRoot verify the user"
    names = [i for i, _ in final]
    assert names.index("ENTRYPOINT") > max(i for i, n in enumerate(names) if n == "USER")
    assert any(re.search(r"useradd\b.*--uid 1000\b.*\bember\b", r) for r in instructions(final, "RUN"))


def test_dockerfile_exposes_the_port_the_server_listens_on(final):
    env = env_of(final)
    assert instructions(final, "EXPOSE") == [str(PORT)]
    assert env["EMBER_PORT"] == str(PORT) and env["EMBER_HOST"] == "0.0.0.0"
    assert env["EMBER_MODEL_PATH"] == "/mnt/models"


def test_dockerfile_entrypoint_is_exec_form_ember_serve(final):
    entry = instructions(final, "ENTRYPOINT")
    assert len(entry) == 1
    assert exec_form(entry[0]) == ["ember", "serve"]  # no shell in between: SIGTERM reaches the server
    for cmd in instructions(final, "CMD"):
        exec_form(cmd)
    assert "ember" in pyproject()["project"]["scripts"], "the entrypoint is the project's console script"


def test_numba_cache_dir_is_in_the_users_home(final):
    cache = env_of(final)["NUMBA_CACHE_DIR"]
    assert cache.startswith("/home/ember/")
    assert any("chown" in r and "ember:ember /home/ember" in r for r in instructions(final, "RUN"))


class _Stub(http.server.BaseHTTPRequestHandler):
    status = 200
    paths = []

    def do_GET(self):
        type(self).paths.append(self.path)
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_command_follows_readiness(final):
    (hc,) = instructions(final, "HEALTHCHECK")
    argv = exec_form(hc.split(" CMD ", 1)[1])
    assert argv[0] == "python"
    argv = [sys.executable, *argv[1:]]

    def run(port):
        env = dict(os.environ, EMBER_PORT=str(port))
        return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode

    server = http.server.HTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        _Stub.status = 200
        assert run(port) == 0
        _Stub.status = 503
        assert run(port) == 1
        assert _Stub.paths == [READY, READY]
    finally:
        server.shutdown()
        server.server_close()
    assert run(free_port()) != 0  # nothing listening


def test_prewarm_script_runs(capsys):
    runpy.run_path(os.path.join(DOCKER, "prewarm.py"), run_name="__main__")
    assert "prewarm: numba cache" in capsys.readouterr().out


# ---- the environment-variable contract -------------------------------------------------------
def test_image_env_is_documented_with_its_values(final):
    table = readme_env_table()
    image = {k: v for k, v in env_of(final).items() if k.startswith(("EMBER_", "NUMBA_"))}
    assert image, "the final stage sets no EMBER_* variables"
    wrong = {k: (v, table.get(k)) for k, v in image.items() if table.get(k) != v}
    assert not wrong, f"image value vs docker/README.md: {wrong}"


def test_readme_env_vars_are_the_clis(final):
    config = pytest.importorskip("ember.serve.config", reason="ember.serve is not importable")
    table = readme_env_table()
    cli_vars = {var: (field, parse) for field, (var, parse) in config.ENV_VARS.items()}
    documented = {k for k in table if k.startswith("EMBER_")}
    assert documented == set(cli_vars) | {"EMBER_MODEL_PATH"}, "README table vs config.ENV_VARS"
    image = env_of(final)
    defaults = config.ServerConfig()
    for var, (field, parse) in cli_vars.items():
        if var not in image:  # unset in the image: the README states the CLI's own default
            assert (parse(table[var]) if table[var] else None) == getattr(defaults, field), var  # `` = unset


def test_cli_serves_ember_model_path_without_a_path_argument(monkeypatch, tmp_path, capsys):
    """The image runs `ember serve` with no PATH: the CLI must take $EMBER_MODEL_PATH."""
    pytest.importorskip("ember.serve.config", reason="ember.serve is not importable")
    from ember.cli.main import main

    missing = str(tmp_path / "no-models-here")
    monkeypatch.setenv("EMBER_MODEL_PATH", missing)
    assert main(["serve"]) == 2
    assert missing in capsys.readouterr().err


def test_manifest_env_vars_are_documented():
    table = readme_env_table()
    used = {e["name"] for docs in manifests().values() for d in docs for e in walk_env(d)}
    undocumented = {v for v in used if v.startswith("EMBER_") and v not in table}
    assert not undocumented


# ---- the manifests -------------------------------------------------------------------------
def walk(node):
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from walk(child)


def walk_env(doc):
    for node in walk(doc):
        if isinstance(node, dict) and isinstance(node.get("env"), list):
            yield from node["env"]


def test_every_manifest_parses_as_the_expected_kinds():
    found = {os.path.relpath(os.path.join(d, f), DOCKER) for d, _, fs in os.walk(DOCKER)
             for f in fs if f.endswith((".yaml", ".yml"))}
    assert found == set(MANIFESTS)
    for rel, docs in manifests().items():
        assert [(d["apiVersion"], d["kind"]) for d in docs] == MANIFESTS[rel], rel
        assert all(d["metadata"]["name"] for d in docs), rel


def test_string_fields_are_strings():
    """Annotation, label and env values and model-format versions must be YAML strings ("8080", not 8080)."""
    bad = []
    for rel, docs in manifests().items():
        for node in (n for d in docs for n in walk(d) if isinstance(n, dict)):
            for key in ("annotations", "labels", "matchLabels"):
                if isinstance(node.get(key), dict):
                    bad += [(rel, key, k) for k, v in node[key].items() if not isinstance(v, str)]
            for key in ("value", "version"):  # env entries; modelFormat and supportedModelFormats entries
                if "name" in node and key in node and not isinstance(node[key], str):
                    bad.append((rel, node["name"], key))
    assert not bad


def test_servingruntime():
    spec = one("kserve/servingruntime.yaml")["spec"]
    assert spec["protocolVersions"] == ["v2"]
    formats = {f["name"]: f for f in spec["supportedModelFormats"]}
    assert formats["ember"]["version"] == "1" and formats["ember"]["autoSelect"] is True
    assert formats["onnx"]["autoSelect"] is False and "priority" not in formats["onnx"]
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(PORT)
    assert spec["annotations"]["prometheus.kserve.io/path"] == METRICS
    (c,) = spec["containers"]
    assert c["name"] == "kserve-container"
    assert c["image"] == "ghcr.io/ember-ml/ember-serve:0.1.0"
    assert c["args"][0] == "/mnt/models" and f"--port={PORT}" in c["args"] and "--host=0.0.0.0" in c["args"]
    assert [p["containerPort"] for p in c["ports"]] == [PORT]
    assert c["readinessProbe"]["httpGet"] == {"path": READY, "port": PORT}
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    threads = {e["name"]: e["value"] for e in c["env"]}
    assert threads["NUMBA_NUM_THREADS"] == threads["OMP_NUM_THREADS"] == c["resources"]["limits"]["cpu"]


def test_inferenceservice_selects_the_ember_runtime():
    isvc = one("kserve/inferenceservice.yaml")
    runtime = one("kserve/servingruntime.yaml")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/enable-prometheus-scraping"] == "true"
    pred = isvc["spec"]["predictor"]
    assert 1 <= pred["minReplicas"] <= pred["maxReplicas"]
    model = pred["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert re.match(r"(s3|gs|pvc|https?|hdfs|webhdfs|oci|hf)://\S+$", model["storageUri"])


def test_deployment(final):
    dep = one("k8s/deployment.yaml")
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    c = container_of(dep)
    assert c["image"] == one("kserve/servingruntime.yaml")["spec"]["containers"][0]["image"]
    assert [p["containerPort"] for p in c["ports"]] == [PORT]
    for probe, path in (("startupProbe", LIVE), ("livenessProbe", LIVE), ("readinessProbe", READY)):
        get = c[probe]["httpGet"]
        assert get["path"] == path and resolve_port(c, get["port"]) == PORT, probe
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == str(PORT) and ann["prometheus.io/path"] == METRICS
    sec = pod["spec"]["securityContext"]
    assert sec["runAsNonRoot"] is True
    assert str(sec["runAsUser"]) == instructions(final, "USER")[-1].split(":")[0]
    (mount,) = c["volumeMounts"]
    assert mount["mountPath"] == env_of(final)["EMBER_MODEL_PATH"]
    assert mount["name"] in {v["name"] for v in pod["spec"]["volumes"]}
    env = {e["name"]: e for e in c["env"]}
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
        assert env[var]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu", var
    assert c["resources"]["requests"]["cpu"], "the HPA's CPU utilization is relative to the request"


def test_grace_period_covers_prestop_and_drain():
    dep = one("k8s/deployment.yaml")
    c = container_of(dep)
    cmd = c["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[0] == "sleep"  # coreutils is in python:3.11-slim
    drain = float({e["name"]: e.get("value") for e in c["env"]}["EMBER_DRAIN_TIMEOUT_S"])
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > float(cmd[1]) + drain


def test_service_routes_to_the_container_port():
    svc, dep = one("k8s/service.yaml"), one("k8s/deployment.yaml")
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    (port,) = svc["spec"]["ports"]
    assert port["port"] == 80 and resolve_port(container_of(dep), port["targetPort"]) == PORT


def test_hpa_scales_the_deployment_on_cpu():
    hpa, dep = one("k8s/hpa.yaml"), one("k8s/deployment.yaml")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (dep["apiVersion"], dep["kind"], dep["metadata"]["name"])
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 5)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}


def test_probe_and_metrics_paths_are_server_routes(tmp_path, final):
    app_mod = pytest.importorskip("ember.serve.app", reason="ember.serve is not importable")
    app = app_mod.create_app(str(tmp_path))
    gets = {r.path for r in app.routes if "GET" in (getattr(r, "methods", None) or ())}
    used = {READY}  # the HEALTHCHECK's
    for docs in manifests().values():
        for node in (n for d in docs for n in walk(d) if isinstance(n, dict)):
            if isinstance(node.get("httpGet"), dict):
                used.add(node["httpGet"]["path"])
            ann = node.get("annotations")
            if isinstance(ann, dict):
                used |= {v for k, v in ann.items() if k.endswith("/path")}
    assert used == {LIVE, READY, METRICS}
    assert used <= gets, f"not GET routes of the server: {sorted(used - gets)}"
    (hc,) = instructions(final, "HEALTHCHECK")
    assert READY in hc
