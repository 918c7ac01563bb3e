"""A chapter and an exercise notebook run from the installed package, as in Colab.

Colab opens one notebook alone, with torch preinstalled and the course installed from its wheel;
nothing of the repository is there. This test builds the wheel (``pip wheel --no-deps``, offline:
no build isolation), installs it into a fresh virtual environment outside the checkout, and runs
one chapter and one exercise notebook there, from a temporary folder. The fresh environment sees
the project environment's packages (torch, jupyter, ...) through a ``.pth`` file, as Colab's
preinstalled ones, but not the checkout: a path in a ``.pth`` file joins ``sys.path`` without its
own ``.pth`` files being read, so the project's editable install of ``ddpm_course`` stays out.
The notebooks' install cell finds the package installed and installs nothing; nothing downloads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "book/01_brownian_sde.ipynb"
EXERCISE = "exercises/01_brownian_sde.ipynb"
SOURCES = ("ddpm_course", "pyproject.toml", "README.md")  # what the wheel is built from


def run(command: list[str], cwd: Path, env: dict | None = None, timeout: int = 300):
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} failed:\n{result.stdout[-3000:]}"
        f"\n{result.stderr[-3000:]}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def colab(tmp_path_factory) -> dict:
    """A fresh environment with the course's wheel installed: its python and a work folder."""
    base = tmp_path_factory.mktemp("colab")
    source = base / "source"  # a copy: building writes build/ and *.egg-info next to it
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name,
                source / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = base / "wheels"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "--quiet", "-w", str(wheels), str(source)],
        cwd=base,
    )
    (wheel,) = wheels.glob("ddpm_course-*.whl")
    venv = base / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=base)
    python = venv / "bin" / "python"
    site_packages = Path(
        run(
            [
                str(python),
                "-c",
                "import sysconfig; print(sysconfig.get_path('purelib'))",
            ],
            cwd=base,
        ).strip()
    )
    # the preinstalled packages (torch, jupyter, ...): this environment's, on sys.path
    (site_packages / "preinstalled.pth").write_text(
        sysconfig.get_path("purelib") + "\n"
    )
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
        + ["--no-index", "--quiet", str(wheel)],
        cwd=base,
    )
    work = base / "work"
    work.mkdir()
    env = {
        key: value for key, value in os.environ.items() if key not in ("PYTHONPATH",)
    }
    env.update(OMP_NUM_THREADS="1", DDPM_COURSE_PROFILE="quick", MPLBACKEND="Agg")
    return {"python": python, "work": work, "env": env, "site": site_packages}


def test_the_package_comes_from_the_wheel_with_its_results(colab):
    script = textwrap.dedent(
        """
        import json, ddpm_course
        from ddpm_course import results
        print(json.dumps({"file": ddpm_course.__file__, "names": results.names(),
                          "floor": results.load("fashion_eval")["floor"]["median"]}))
        """
    )
    found = json.loads(
        run([str(colab["python"]), "-c", script], cwd=colab["work"], env=colab["env"])
    )
    assert Path(found["file"]).is_relative_to(colab["site"])  # not the checkout
    in_checkout = sorted(
        str(p.relative_to(ROOT / "ddpm_course" / "results").with_suffix(""))
        for p in (ROOT / "ddpm_course" / "results").rglob("*.json")
    )
    assert found["names"] == in_checkout  # every results file travels with the wheel
    checkout = json.loads((ROOT / "ddpm_course/results/fashion_eval.json").read_text())
    assert found["floor"] == checkout["floor"]["median"]


@pytest.mark.parametrize("notebook", [CHAPTER, EXERCISE])
def test_a_notebook_runs_alone_from_the_installed_package(colab, notebook):
    copy = colab["work"] / Path(notebook).name  # the notebook alone, as Colab opens it
    shutil.copy2(ROOT / notebook, copy)
    script = textwrap.dedent(
        f"""
        import nbformat
        from nbclient import NotebookClient
        notebook = nbformat.read({str(copy)!r}, as_version=4)
        NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
        errors = [o for c in notebook.cells for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, errors
        import ddpm_course
        print(ddpm_course.__file__)
        """
    )
    printed = run(
        [str(colab["python"]), "-c", script],
        cwd=colab["work"],
        env=colab["env"],
        timeout=600,
    )
    assert Path(printed.strip().splitlines()[-1]).is_relative_to(colab["site"])
