"""Lint of docker/'s KServe and Kubernetes manifests without a cluster: kinds and API versions, string fields,
the runtime / InferenceService / Deployment / Service / HPA agreeing with each other, and their ports,
probes and metrics path being the server's own."""
import os
import re

import pytest

from .docker_spec import (DOCKER, LIVE, MANIFESTS, METRICS, PORT, READY, container_of, env_of, final_stage,
                          instructions, manifests, one, resolve_port, walk)


@pytest.fixture(scope="module")
def final():
    """The Dockerfile's last (runtime) stage."""
    return final_stage()


# ---- the manifests -------------------------------------------------------------------------
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
