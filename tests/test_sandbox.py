"""The sandbox's parts: what the runner and the student view import, what a notebook can see.

* the runner (sandbox_runner.py) and every module the student view copies import only the
  standard library, torch and safetensors (no answer key can come in through them);
* the generated view: ``check`` is a no-op, the package's maths raise a clear ImportError, the
  input functions of the test cases are rebuilt equal to the package's;
* inside the sandbox (bubblewrap needed; a failure in CI without it): an unprivileged uid with no
  capabilities, no network, a read-only file system but for its folder and a capped /tmp, no
  other job folder, no way to undo the mounts.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from ddpm_course.grading import sandbox
from ddpm_course.grading.exercise import encode_args
from ddpm_course.grading.registry import EXERCISES
from ddpm_course.grading.runner import Limits

GRADING = Path(sandbox.__file__).resolve().parent
ALLOWED_ROOTS = set(sys.stdlib_module_names) | {"torch", "safetensors"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name} imports relatively"
            roots.add(node.module or "")
    return roots


def test_the_runner_imports_only_the_standard_library_torch_and_safetensors():
    view_modules = {"ddpm_course.grading.drivers", "ddpm_course.grading.exercise"}
    roots = {
        name.split(".")[0]
        for name in _imported_roots(GRADING / "sandbox_runner.py")
        if name not in view_modules
    }
    assert roots <= ALLOWED_ROOTS, roots - ALLOWED_ROOTS


@pytest.mark.parametrize(
    "module", sorted(m for m, how in sandbox.STUDENT_VIEW.items() if how == "copy")
)
def test_every_copied_module_of_the_view_imports_only_the_standard_library_and_torch(
    module,
):
    path = GRADING.parent / Path(*module.split(".")[1:]).with_suffix(".py")
    roots = {name.split(".")[0] for name in _imported_roots(path)}
    assert roots <= set(sys.stdlib_module_names) | {"torch"}, roots


def _run_in_view(view: Path, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` with the view first on sys.path and no .pth processing (as the sandbox does)."""
    script = (
        f"import sys\nsys.path[:] = [{str(view)!r}] + [p for p in sys.path if 'site-packages' not in p]"
        f" + {sandbox._site_dirs()!r}\n" + code
    )
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_student_view_has_no_answer_key(tmp_path):
    view = sandbox.write_student_view(tmp_path / "view")
    cases = {name: EXERCISES[name].cases(0) for name in ("euler_maruyama", "dsm_loss")}
    torch.save(
        {name: [encode_args(c.args) for c in found] for name, found in cases.items()},
        tmp_path / "in.pt",
    )
    result = _run_in_view(
        view,
        "import json, torch\n"
        "from ddpm_course.grading import check\n"
        "from ddpm_course.grading.exercise import decode_args\n"
        "import ddpm_course.grading.drivers\n"
        "out = {'check': repr(check(lambda x: x)), 'errors': []}\n"
        "for name in ['ddpm_course.diffusion', 'ddpm_course.grading.registry', 'ddpm_course.grading.ch03_elbo']:\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError as error:\n"
        "        out['errors'].append(str(error))\n"
        f"inputs = torch.load({str(tmp_path / 'in.pt')!r}, weights_only=True)\n"
        "values = {}\n"
        "for name, found in inputs.items():\n"
        "    args = decode_args(found[0])\n"
        "    x = next(a for a in args if torch.is_tensor(a) and a.ndim == 2)\n"
        "    values[name] = [a(x, 0.5).tolist() if name == 'dsm_loss' and callable(a) else None for a in args]\n"
        "out['values'] = values\nprint(json.dumps(out))",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert len(out["errors"]) == 3
    assert all(
        "is not available while a notebook is graded" in error
        for error in out["errors"]
    )
    assert "CheckResult" in out["check"]
    args = cases["dsm_loss"][0].args
    x = next(a for a in args if torch.is_tensor(a) and a.ndim == 2)
    assert any(callable(arg) for arg in args)
    for position, arg in enumerate(args):
        if callable(arg):  # the rebuilt score model computes what the package's does
            rebuilt = torch.tensor(out["values"]["dsm_loss"][position], dtype=x.dtype)
            assert torch.equal(rebuilt, arg(x, 0.5))


def _zygote_job(cells: list[str], limits: Limits) -> tuple[dict, str]:
    with tempfile.TemporaryDirectory() as work:
        os.chmod(work, 0o755)
        zygote = sandbox.Zygote(Path(work), sandboxed=True, bwrap=sandbox.bwrap_path())
        try:
            ident, job, uid = zygote.new_job()
            (job / "cells.json").write_text(json.dumps(cells))
            (job / "exercises.json").write_text("[]")
            torch.save({}, job / "inputs.pt")
            record = zygote.run(ident, job, uid, limits.as_request())
            return record, (job / "output.txt").read_text()
        finally:
            zygote.close()


def test_inside_the_sandbox_a_notebook_is_unprivileged_offline_and_alone():
    if sandbox.bwrap_path() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("bubblewrap is not installed: in CI the sandbox tests must run")
        pytest.skip("bubblewrap is not installed (make sandbox-deps)")
    probe = r"""
import ctypes, os, socket
report = {"uid": os.getuid(), "cwd": os.getcwd()}
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    report["network"] = "connected"
except OSError as error:
    report["network"] = type(error).__name__
report["interfaces"] = [name for _, name in socket.if_nameindex()]
libc = ctypes.CDLL(None, use_errno=True)
report["umount"] = libc.umount2(b"/jobs", 2) == 0 or ctypes.get_errno()
report["mount"] = libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) == 0 or ctypes.get_errno()
for name in ["/usr/x", "/x", "/dev/x", "x", "/tmp/x"]:
    try:
        open(name, "w").write("1")
        report[name] = "written"
    except OSError as error:
        report[name] = type(error).__name__
for place in ["/jobs", "/proc", "/view"]:
    try:
        report[place] = os.listdir(place)
    except OSError as error:
        report[place] = type(error).__name__
report["tmp"] = os.statvfs("/tmp").f_blocks * os.statvfs("/tmp").f_frsize
print("REPORT", report)
"""
    record, output = _zygote_job([probe], Limits(timeout=60, tmp_mb=16))
    assert record["exit"] == 0, (record, output)
    report = eval(output.split("REPORT ", 1)[1])  # noqa: S307 (our own probe's output)
    assert report["uid"] == 65534 and report["cwd"] == "/job"
    assert report["network"] != "connected" and report["interfaces"] == ["lo"]
    assert report["umount"] is not True and report["mount"] is not True
    assert report["x"] == report["/tmp/x"] == "written"
    assert all(report[name] != "written" for name in ["/usr/x", "/x", "/dev/x"])
    assert report["/jobs"] == "PermissionError" and report["/proc"] == ["cpuinfo"]
    assert report["tmp"] == 16 * 2**20


def test_site_packages_under_tmp_stay_visible_behind_the_private_tmp(
    tmp_path, monkeypatch
):
    """A checkout in a temporary folder has its virtual environment under /tmp, which the
    sandbox covers with its own tmpfs: site-packages must be mounted somewhere else."""
    site_dir = tmp_path / "venv" / "lib" / "python3" / "site-packages"
    (site_dir / "ddpm_course").mkdir(parents=True)
    (site_dir / "torch").mkdir()
    monkeypatch.setattr(sandbox, "_site_dirs", lambda: [str(site_dir)])
    command = sandbox.bwrap_command(
        "/usr/bin/bwrap", tmp_path / "v", tmp_path / "j", True
    )
    hidden = ("/tmp", "/dev/shm")  # mounted as fresh tmpfs after the binds
    binds = [
        (command[i + 1], command[i + 2])
        for i, arg in enumerate(command)
        if arg in ("--ro-bind", "--bind")
    ]
    assert (str(site_dir), f"{sandbox.SITE_MOUNT}/0") in binds
    for _source, target in binds:
        assert not any(target == h or target.startswith(h + "/") for h in hidden), (
            target
        )
    # the package installed in site-packages is masked at its mounted place
    index = command.index("--tmpfs", command.index(str(site_dir)))
    assert command[index + 1] == f"{sandbox.SITE_MOUNT}/0/ddpm_course"
    runner = command.index("/view/sandbox_runner.py")
    assert command[runner + 1 :] == [f"{sandbox.SITE_MOUNT}/0"]
