"""The image's Dockerfile (it cannot be built here): parsed and checked against the repository."""

from __future__ import annotations

import fnmatch
import pathlib
import re
import shlex
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    parsed = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            parsed.append((keyword.upper(), rest.strip()))
    return parsed


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (the global ARGs before the first FROM dropped)."""
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


def arg_defaults() -> dict[str, str]:
    defaults = {}
    for keyword, rest in instructions():
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            defaults[name] = value
    return defaults


def _expand(text: str) -> str:
    defaults = arg_defaults()
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), text)


def test_both_stages_build_on_a_cuda_runtime_with_python():
    defaults = arg_defaults()
    assert defaults["CUDA_IMAGE"].startswith("nvidia/cuda:") and "runtime" in defaults["CUDA_IMAGE"]
    build, final = stages()
    assert _expand(build[0][1]) == f"{defaults['CUDA_IMAGE']} AS build"
    assert _expand(final[0][1]) == defaults["CUDA_IMAGE"]
    assert any(k == "RUN" and "python3" in r and "apt-get install" in r for k, r in final)


def test_it_installs_the_project_from_its_sources():
    build, _ = stages()
    copied = [shlex.split(rest)[:-1] for keyword, rest in build if keyword == "COPY"]
    sources = {source.rstrip("/") for group in copied for source in group}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert {"pyproject.toml", project["project"]["readme"]} <= sources
    # Every package folder setuptools' find would pick up is copied.
    find = project["tool"]["setuptools"]["packages"]["find"]
    roots = {where for where in find["where"] if where != "."}
    packages = {path.parent.name for path in REPO.glob("*/__init__.py")
                if any(fnmatch.fnmatch(path.parent.name, p) for p in find["include"])}
    assert packages and roots | packages <= sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert not _is_ignored(source), f"{source} is excluded by .dockerignore"
    runs = [rest for keyword, rest in build if keyword == "RUN"]
    assert any(re.search(r"pip install \.(\s|$)", run) for run in runs)
    assert any("torch==${TORCH_VERSION}" in run for run in runs)


def test_it_runs_tandem_as_a_non_root_user():
    _, final = stages()
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the final stage sets no USER"
    uid = _expand(users[-1]).split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert ("ENTRYPOINT", '["tandem"]') in final
    assert any(keyword == "COPY" and "--from=build" in rest for keyword, rest in final)


def test_build_arguments_are_documented():
    header = (REPO / "Dockerfile").read_text().split("\nARG", 1)[0]
    for name in {rest.split("=")[0] for keyword, rest in instructions() if keyword == "ARG"}:
        assert re.search(rf"#\s+{name}\s", header), f"ARG {name} is not described"


def test_dockerignore_keeps_local_state_out():
    for path in (".git", ".venv", "tests", "src/__pycache__/x.pyc"):
        assert _is_ignored(path), path


def _is_ignored(path: str) -> bool:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    return any(fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*")
               or fnmatch.fnmatch(path, "*/" + pattern.lstrip("*/")) for pattern in patterns)
