"""One import namespace: the repository's top-level folders install as ``mv2mae.*``, and a user's own
``preprocess.py`` or ``tools/`` package can neither shadow ours nor merge with it."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# repository folder -> import name, as pyproject.toml's package-dir maps them
FOLDERS = {"mv2mae": "mv2mae", "preprocess": "mv2mae.preprocess", "shards": "mv2mae.shards",
           "tools": "mv2mae.tools"}


def _expected_members() -> set[str]:
    """Every module and preset of the source folders, at the path it must have inside the wheel."""
    members = set()
    for folder, name in FOLDERS.items():
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                rel = path.relative_to(REPO / folder).as_posix()
                members.add(f"{name.replace('.', '/')}/{rel}")
    return members


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # built from a copy: setuptools leaves a build/ folder beside the pyproject.toml it builds
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(src)], check=True, capture_output=True, text=True)
    (found,) = out.glob("mv2mae-*.whl")
    return found


def test_wheel_holds_one_top_level_package_with_every_module(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"mv2mae"}
    missing = _expected_members() - set(names)
    assert not missing, f"modules not in the wheel (add their package to pyproject.toml): {sorted(missing)[:5]}"


def _clashing_cwd(tmp_path: Path) -> Path:
    """A working directory as a researcher's may be: a preprocess.py and a tools/ package of their own."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "preprocess.py").write_text("raise ImportError('the user preprocess.py was imported')\n")
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "__init__.py").write_text("")
    (tmp_path / "tools" / "verify.py").write_text("raise ImportError('the user tools/ was imported')\n")
    return tmp_path


# imports one module of each installed folder and prints where each came from, one per line
IMPORT_ALL = ("import importlib\n"
              "for name in ('mv2mae', 'mv2mae.preprocess.pipeline', 'mv2mae.preprocess.adapters', "
              "'mv2mae.shards.reader', 'mv2mae.tools.verify', 'mv2mae.cli'):\n"
              "    print(importlib.import_module(name).__file__)")


def test_installed_wheel_imports_beside_user_folders_of_the_same_names(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, text=True)
    cwd = _clashing_cwd(tmp_path / "work")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    files = [Path(line) for line in out.stdout.split()]
    assert len(files) == 6 and all(f.is_relative_to(target) for f in files), files  # the wheel's, not the repo's


def test_editable_install_imports_beside_user_folders_of_the_same_names(tmp_path):
    cwd = _clashing_cwd(tmp_path)
    out = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert all(Path(line).is_relative_to(REPO) for line in out.stdout.split()), out.stdout
    help_out = subprocess.run([sys.executable, "-m", "mv2mae.cli", "preprocess", "--help"], cwd=cwd,
                              capture_output=True, text=True)
    assert help_out.returncode == 0 and "--root" in help_out.stdout, help_out.stderr
