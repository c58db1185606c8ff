"""What ``pip install`` leaves behind: one import package, with its data files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def wheel(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(out),
            str(project_root),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[:3000]
    (path,) = out.glob("crunchql-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_installs_one_top_level_package(wheel: zipfile.ZipFile) -> None:
    (top_level,) = [n for n in wheel.namelist() if n.endswith(".dist-info/top_level.txt")]
    assert wheel.read(top_level).decode().split() == ["crunchql"]
    roots = {name.split("/", 1)[0] for name in wheel.namelist()}
    assert {root for root in roots if not root.endswith(".dist-info")} == {"crunchql"}


def test_the_wheel_carries_every_folder_and_its_data(
    wheel: zipfile.ZipFile, project_root: Path
) -> None:
    names = set(wheel.namelist())
    for link in (project_root / "crunchql").iterdir():
        if link.is_symlink():
            assert f"crunchql/{link.name}/__init__.py" in names, link.name
    assert "crunchql/__main__.py" in names
    assert "crunchql/db/migrations/script.py.mako" in names
    assert any(n.startswith("crunchql/db/migrations/versions/") for n in names)
    assert any(n.startswith("crunchql/app/static/graphiql/") for n in names)
    # The web console, whole: its page, modules, bundled schema and vendored libraries.
    console = project_root / "app" / "static" / "console"
    for path in console.rglob("*"):
        if path.is_file():
            relative = path.relative_to(project_root).as_posix()
            assert f"crunchql/{relative}" in names, relative


def test_every_top_level_folder_is_linked_into_the_namespace(project_root: Path) -> None:
    linked = {p.name for p in (project_root / "crunchql").iterdir() if p.is_symlink()}
    packages = {
        p.name
        for p in project_root.iterdir()
        if (p / "__init__.py").is_file() and p.name not in {"tests", "benchmarks", "crunchql"}
    }
    assert linked == packages
    for name in linked:
        assert (project_root / "crunchql" / name).resolve() == project_root / name


def test_python_dash_m_crunchql_is_the_console_script(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crunchql", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "worker" in result.stdout


def test_the_image_build_copies_every_folder_of_the_namespace(project_root: Path) -> None:
    dockerfile = (project_root / "deploy" / "Dockerfile").read_text("utf-8")
    for link in (project_root / "crunchql").iterdir():
        if link.is_symlink():
            assert f"COPY {link.name} ./{link.name}\n" in dockerfile, link.name
    assert "COPY crunchql ./crunchql\n" in dockerfile
