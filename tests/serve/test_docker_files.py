"""Lint of docker/ without a Docker engine: the Dockerfile and docker/README.md must agree with each other and
with the server (its CLI's environment variables and defaults), and the image's HEALTHCHECK command is run
against a stub server. The manifests: test_docker_manifests.py."""
import fnmatch
import http.server
import os
import re
import runpy
import socket
import subprocess
import sys
import threading

import pytest

from .docker_spec import (DOCKER, PORT, READY, ROOT, dockerfile_stages, env_of, exec_form, final_stage,
                          instructions, manifests, pyproject, read, readme_env_table, walk_env)


@pytest.fixture(scope="module")
def final():
    """The Dockerfile's last (runtime) stage."""
    return final_stage()


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
