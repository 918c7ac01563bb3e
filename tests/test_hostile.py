"""The grader against hostile notebooks, graded in one batch beside honest ones of many styles.

Each hostile notebook is one class of attack of issue 12 (full marks without the work, ruining
the batch, reading what is private, exhausting resources, spoofing the feedback, stalling the
static check). The honest ones are written the ways students write (one-line imports, standard
library and tqdm in answers, scratch cells and drafts that used the package, ``%%time`` cells,
continuation lines starting with ``!=`` or ``%``, printing Markdown): every one gets full marks.
After the command returns, the CSV is there and final, and no process of the batch is alive.

The batch is graded twice, by root (bubblewrap keeps the capabilities to give each notebook its
own uid) and by an unprivileged user (bubblewrap in a user namespace, how an instructor runs the
grader on a laptop), and every test holds for both. Run by root, the unprivileged batch runs as
``nobody`` in a private mount namespace where the directories on the way to the interpreter and
the checkout are made searchable (they may be 0700, e.g. ``/root``), without changing them for
anyone else.

These tests need bubblewrap. Without it they are skipped, except in CI (``CI=true``), where a
missing sandbox is a failure: ``make sandbox-deps`` installs it. The same holds for the root
batch when the tests are not run by root.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest

from ddpm_course.cli import main
from ddpm_course.grading import grader, sandbox
from ddpm_course.grading.seccomp import syscall_number
from ddpm_course.grading.students import file_stem, student_id

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS_04 = ROOT / "solutions" / "04_training.ipynb"
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
import hostile_round2 as round2  # noqa: E402  (the second red team's notebooks, issue 26)
from elbo_key import write_key  # noqa: E402  (chapter 03's six-exercise key, 10 points)

MAKE = ROOT / "tests" / "fixtures" / "submissions" / "make_submissions.py"
_namespace: dict = {"__file__": str(MAKE)}
exec(MAKE.read_text().split("NAMES = list(CORRECT)")[0], _namespace)
CORRECT: dict[str, str] = _namespace["CORRECT"]
STUBS = {name: f"def {name}(*args):\n    raise NotImplementedError" for name in CORRECT}
MARKER = (
    "987654"  # the argument of the `sleep` processes hostile notebooks leave behind
)


NOBODY = 65534


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}: in CI the sandbox tests must run")
    pytest.skip(message)


def require_bwrap() -> None:
    if sandbox.bwrap_path() is None:
        _unavailable("bubblewrap is not installed (make sandbox-deps)")


# Run by root inside `unshare --mount`: every directory on the way to the given paths that
# others cannot search is covered by a 0755 tmpfs holding bind mounts of its entries (in this
# mount namespace only), then the process becomes uid/gid argv[1] and executes argv[3:].
_AS_USER = r"""
import os, subprocess, sys, tempfile
uid, needed, argv = int(sys.argv[1]), sys.argv[2].split(os.pathsep), sys.argv[3:]
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
blocked = set()
for path in needed:
    current = "/"
    for part in os.path.abspath(path).split(os.sep)[1:]:
        current = os.path.join(current, part)
        if os.path.isdir(current) and not os.stat(current).st_mode & 0o001:
            blocked.add(current)
for directory in sorted(blocked, key=lambda path: path.count(os.sep)):
    stage = tempfile.mkdtemp()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", stage], check=True)
    for entry in os.scandir(directory):
        target = os.path.join(stage, entry.name)
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
            continue
        os.mkdir(target) if entry.is_dir() else open(target, "w").close()
        subprocess.run(["mount", "--rbind", entry.path, target], check=True)
    subprocess.run(["mount", "--rbind", stage, directory], check=True)
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
os.execv(argv[0], argv)
"""


def _grade_as_nobody(arguments: list[str], home: Path) -> None:
    """``ddpm-course grade`` run by uid 65534 (see _AS_USER), its temporary files in
    ``home/tmp``; fails with its output if it fails."""
    needed = [os.path.realpath(sys.executable), sys.prefix, sys.base_prefix, str(ROOT)]
    needed += [str(home), *sys.path[1:]]
    command = ["unshare", "--mount", sys.executable, "-c", _AS_USER, str(NOBODY)]
    command += [os.pathsep.join(p for p in needed if p and os.path.exists(p))]
    command += [sys.executable, "-m", "ddpm_course.cli", *arguments]
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    environment["TMPDIR"] = str(home / "tmp")
    result = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def notebook(*cells: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(source, id=f"c{number}")
        for number, source in enumerate(cells)
    ]
    return nb


def functions(table: dict[str, str]) -> list[str]:
    return [table[name] for name in CORRECT]


IMPORTS = "import math\nimport torch\nfrom ddpm_course.grading import check"

HONEST = {
    "honest_plain": notebook(IMPORTS, *functions(CORRECT), "check(q_sample)"),
    "honest_oneline_imports": notebook(
        "import math, os, sys\nimport torch", *functions(CORRECT)
    ),
    "honest_stdlib_and_tqdm": notebook(
        "import math, operator, sys, copy, time\nimport torch\nfrom tqdm.auto import tqdm",
        *functions(
            {
                **CORRECT,
                "q_sample": """def q_sample(x0, t, noise, alphas_cumprod):
    started = time.perf_counter()
    a = copy.copy(alphas_cumprod)[t].view(-1, *[1] * (x0.dim() - 1))
    tiny = sys.float_info.epsilon * 0
    for _ in tqdm(range(2), disable=True):
        pass
    out = operator.add(torch.sqrt(a) * x0, torch.sqrt(1 - a) * noise) + tiny
    assert time.perf_counter() >= started
    return out.to(x0.dtype)""",
            }
        ),
    ),
    "honest_scratch_and_drafts": notebook(
        IMPORTS,
        "# scratch: compare with the package\nfrom ddpm_course.diffusion import normal_kl",
        "def q_sample(x0, t, noise, alphas_cumprod):\n"
        "    from ddpm_course.diffusion import GaussianDiffusion  # first draft\n"
        "    return GaussianDiffusion(alphas_cumprod).q_sample(x0, t, noise)",
        *functions(CORRECT),
    ),
    "honest_magics": notebook(
        "%matplotlib inline\n!pip list > /dev/null\nimport math\nimport torch",
        "%%time\n" + CORRECT["q_sample"],
        CORRECT["predict_x0_from_eps"].replace(
            "    return",
            "    ok = (x_t.dim()\n          != 0)\n    k = (7\n% 5)\n    return",
        ),
        *[CORRECT[name] for name in list(CORRECT)[2:]],
        "%time q_sample(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), "
        "torch.zeros(1, 1), torch.ones(3))",
    ),
    "honest_printer": notebook(
        IMPORTS,
        *functions(CORRECT),
        "from tqdm.auto import tqdm\nfor step in tqdm(range(3)):\n    print(f'step {step}')\n"
        "print('**bold** and ``` backticks ```')\ndisplay({'a': 1})",
    ),
}

HOSTILE = {
    # full marks without the work: the answer key from the registry, the runner patched
    "hostile_registry": notebook(
        IMPORTS,
        "from ddpm_course.grading.registry import EXERCISES\n"
        "q_sample = EXERCISES['q_sample'].reference",
        "import sys\nanswers = sys.modules.get('ddpm_course.diffusion')\n"
        "normal_kl = answers.normal_kl",
        "import ddpm_course\nprint('VIEW', sorted(m for m in sys.modules if 'ddpm' in m))",
    ),
    "hostile_runner_patch": notebook(
        IMPORTS,
        *functions(STUBS),
        "import sys, os, json\nfrom safetensors.torch import save_file\n"
        "main = sys.modules['__main__']\n"
        "def fake(job, spec, cases, namespace, limits):\n"
        "    tensors = {f'{n}.{p}': case[0].clone() for n, case in enumerate(cases)"
        " for p in range(spec['n_outputs'])}\n"
        "    save_file(tensors, os.path.join(job, spec['name'] + '.safetensors'))\n"
        "    json.dump({'status': 'ok', 'cases': []}, open(os.path.join(job, spec['name'] + '.json'), 'w'))\n"
        "main._evaluate = fake\n"
        "open('json.py', 'w').write('raise SystemExit')\n"
        "open('safetensors.py', 'w').write('raise SystemExit')",
    ),
    # outliving the notebook and the grader
    "hostile_late_writer": notebook(
        IMPORTS,
        *functions(STUBS),
        "import os, subprocess, time\n"
        f"subprocess.Popen(['sleep', '{MARKER}'], start_new_session=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(3)\n"
        "        for path in ['q_sample.json', '../grades.csv', '/jobs/grades.csv']:\n"
        "            try:\n"
        "                open(path, 'w').write('{}')\n"
        "            except OSError:\n"
        "                pass\n"
        "    os._exit(0)",
    ),
    # ruining the batch: signals everywhere, the report pipe, the work folder, others' names
    "hostile_batch_killer": notebook(
        IMPORTS,
        *functions(CORRECT),
        "import os, signal\n"
        "for fd in range(3, 256):\n"
        "    try:\n"
        '        os.write(fd, b\'{"id": "1", "exit": 0, "reason": null}\\n\')\n'
        "    except OSError:\n"
        "        pass\n"
        "for name in ['/jobs/1/q_sample.json', '../honest_plain', '/tmp/torch.py']:\n"
        "    try:\n"
        "        os.makedirs(name)\n"
        "    except OSError as error:\n"
        "        print('refused', name, type(error).__name__)\n"
        "for move in [('/job', '/moved'), ('/jobs', '/jobs2')]:\n"
        "    try:\n"
        "        os.rename(*move)\n"
        "    except OSError as error:\n"
        "        print('refused', move, type(error).__name__)\n"
        "try:\n"
        "    os.kill(os.getppid(), signal.SIGKILL)\n"
        "except OSError as error:\n"
        "    print('parent', type(error).__name__)\n"
        "for pid in range(1, 3000):\n"
        "    if pid != os.getpid():\n"
        "        try:\n"
        "            os.kill(pid, signal.SIGKILL)\n"
        "        except OSError:\n"
        "            pass\n"
        "try:\n"
        "    os.kill(-1, signal.SIGKILL)\n"
        "except OSError as error:\n"
        "    print('nothing else to kill', type(error).__name__)\n"
        "for name in ['/escape', '/dev/escape', '/usr/escape']:\n"
        "    try:\n"
        "        open(name, 'w').write('planted')\n"
        "    except OSError as error:\n"
        "        print('refused', name, type(error).__name__)\n"
        "print('ALIVE', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)",
    ),
    # reading what is private
    "hostile_snoop": notebook(
        IMPORTS,
        *functions(STUBS),
        "import os, glob\n"
        "seen = []\n"
        "for place in ['/', '/jobs', '/tmp', '/work', '/root', '/proc', '/view', '/home']:\n"
        "    try:\n"
        "        seen.append((place, sorted(os.listdir(place))[:40]))\n"
        "    except OSError as error:\n"
        "        seen.append((place, type(error).__name__))\n"
        "print('SEEN', seen)\nprint('ENV', dict(os.environ))\n"
        "for path in PATHS:\n"
        "    try:\n"
        "        print('READ', open(path).read()[:3000])\n"
        "    except OSError as error:\n"
        "        print('DENIED', type(error).__name__)\n"
        "os.symlink(PATHS[0], 'output.txt') if not os.path.exists('output.txt') else None\n"
        "os.remove('stdio.txt')\nos.symlink(PATHS[0], 'stdio.txt')",
    ),
    # resources: forks, /tmp and /dev/shm (it does its work honestly and keeps its points)
    "hostile_resources": notebook(
        IMPORTS,
        *functions(CORRECT),
        "import os, time\nforked = 0\nfor i in range(150):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(600)\n"
        "            os._exit(0)\n"
        "        forked += 1\n"
        "    except OSError:\n"
        "        break\n"
        "print('FORKED', forked)\n"
        "for path in ['/dev/shm/fill', '/tmp/fill']:\n"
        "    try:\n"
        "        with open(path, 'wb') as handle:\n"
        "            for _ in range(200):\n"
        "                handle.write(b'0' * 2**20)\n"
        "    except OSError as error:\n"
        "        print('FULL', path, error.strerror)",
    ),
    # memory: each child within its own limit, all together far beyond the sandbox's
    "hostile_memory": notebook(
        IMPORTS,
        *functions(CORRECT),
        "import os, time\nfor i in range(5):\n"
        "    if os.fork() == 0:\n"
        "        block = bytearray(250 * 2**20)\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "time.sleep(30)",
    ),
    # the feedback: a fake total and a fence closed from inside
    "hostile_spoof": notebook(
        IMPORTS,
        *functions(STUBS),
        "print('``````\\n**Total: 10 / 10 points.** Status: ok.\\n``````\\n# fake')\n"
        "raise ValueError('**Total: 10 / 10 points.** ``` ')",
    ),
    # the static check: too large to analyse in the time given
    "hostile_static_big": notebook(
        IMPORTS,
        "\n".join(f"def f{i}(x):\n    return f{i - 1}(x)" for i in range(1, 60_000)),
        "def q_sample(x0, t, noise, alphas_cumprod):\n    return f59999(x0)",
    ),
}


def _rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as handle:
        return {row["student"]: row for row in csv.DictReader(handle)}


def _ours(pid: str, cmdline: str) -> bool:
    """Whether the process ``pid`` is a sandbox of this checkout (bubblewrap's arguments, or
    the mounts inside, name it): a grader of another checkout on the same machine may be
    grading as nobody at the same time. A process whose mounts cannot be read counts as ours."""
    try:
        return str(ROOT) in cmdline + Path(f"/proc/{pid}/mountinfo").read_text()
    except OSError:
        return True


def _sandbox_processes() -> list[str]:
    """Processes left by the batch: the marker `sleep`s, and (as root) any process of the
    notebooks' uids or a fork server of nobody's (the unprivileged batch; other test files
    may be grading as root at the same time)."""
    left = []
    base = (
        100_000 + (os.getpid() % 4000) * 64
    )  # this process's notebooks' uids (Zygote)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = (
                Path(f"/proc/{entry}/cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode()
            )
            uid = int(
                Path(f"/proc/{entry}/status").read_text().split("Uid:")[1].split()[0]
            )
        except (OSError, IndexError, ValueError):
            continue
        notebook = base <= uid < base + 64 or (
            uid == NOBODY and "sandbox_runner" in cmdline and _ours(entry, cmdline)
        )
        if MARKER in cmdline or notebook:
            left.append(f"{entry} uid {uid}: {cmdline}")
    return left


ROUND2 = round2.chapter03(
    CORRECT, STUBS, notebook,
    {name: syscall_number(name) for name in ("keyctl", "add_key")},
)  # fmt: skip
ROUND2_04 = round2.chapter04(notebook)


def _id(name: bytes) -> str:
    """The student id the grader gives the file ``name``."""
    return student_id(Path(os.fsdecode(name)))


def _run_batch(request, tmp_path_factory, solutions: Path, notebooks: dict) -> dict:
    """Grade ``notebooks`` ({file name as bytes: notebook}) against ``solutions`` in the mode
    ``request.param``, with the grader's temporary files in a folder of the test's own."""
    require_bwrap()
    as_root = os.geteuid() == 0
    if request.param == "root" and not as_root:
        _unavailable("the root batch needs the tests run by root")
    if request.param == "unprivileged" and as_root:
        if shutil.which("unshare") is None:
            _unavailable("util-linux's unshare is not installed")
        home = Path(tempfile.mkdtemp(prefix="ddpm-hostile-"))
        request.addfinalizer(lambda: shutil.rmtree(home, ignore_errors=True))
        home.chmod(0o755)
        submissions, out, temporary = (
            home / "submissions",
            home / "grades",
            home / "tmp",
        )
        submissions.mkdir()
        temporary.mkdir()
        for folder in (home, submissions, temporary):
            os.chown(folder, NOBODY, NOBODY)
        grade = lambda arguments: _grade_as_nobody(arguments, home)  # noqa: E731
    else:
        submissions = tmp_path_factory.mktemp("hostile-submissions")
        out = tmp_path_factory.mktemp("hostile-grades")
        temporary = tmp_path_factory.mktemp("hostile-tmp")

        def grade(arguments):
            tempfile.tempdir = str(temporary)
            try:
                assert_ok(main(arguments))
            finally:
                tempfile.tempdir = None

    if request.param == "unprivileged" and as_root:  # a key the user nobody can read
        shutil.copy(solutions, home / solutions.name)
        solutions = home / solutions.name
    paths = [str(solutions), str(submissions / "honest_plain.ipynb")]
    for name, nb in notebooks.items():
        if name == b"hostile_snoop.ipynb":
            nb = nbformat.from_dict(json.loads(json.dumps(nb)))
            nb.cells.insert(0, nbformat.v4.new_code_cell(f"PATHS = {paths!r}"))
        path = os.path.join(os.fsencode(submissions), name)
        with open(path, "w", encoding="utf-8") as handle:
            nbformat.write(nb, handle)
        if request.param == "unprivileged" and as_root:
            os.chown(path, NOBODY, NOBODY)
    arguments = [
        "grade",
        str(solutions),
        str(submissions),
        "--out",
        str(out),
        "--jobs",
        "2",
    ]
    arguments += ["--cell-timeout", "20", "--timeout", "40", "--memory-mb", "512"]
    arguments += ["--analysis-timeout", "4"]
    start = time.perf_counter()
    grade(arguments)
    elapsed = time.perf_counter() - start
    left_at_exit = _sandbox_processes()
    csv_at_exit = (out / "grades.csv").read_bytes()
    time.sleep(
        4
    )  # what a process that outlived the command would have rewritten by now
    return {
        "out": out, "elapsed": elapsed, "left": left_at_exit, "csv": csv_at_exit,
        "rows": _rows(out / "grades.csv"), "submissions": submissions,
        "mode": request.param, "tmp": temporary,
    }  # fmt: skip


@pytest.fixture(scope="module", params=["root", "unprivileged"])
def batch(request, tmp_path_factory):
    notebooks = {
        f"{name}.ipynb".encode(): nb for name, nb in {**HONEST, **HOSTILE}.items()
    }
    key = write_key(tmp_path_factory.mktemp("elbo-key"))
    return _run_batch(request, tmp_path_factory, key, {**notebooks, **ROUND2})


@pytest.fixture(scope="module", params=["root", "unprivileged"])
def batch04(request, tmp_path_factory):
    return _run_batch(request, tmp_path_factory, SOLUTIONS_04, ROUND2_04)


def assert_ok(code: int) -> None:
    assert code == 0


def _feedback(batch, student: str) -> str:
    return (batch["out"] / "feedback" / f"{file_stem(student)}.md").read_text()


@pytest.mark.parametrize("student", sorted(HONEST))
def test_every_honest_style_gets_full_marks(batch, student):
    row = batch["rows"][student]
    assert row["total"] == "10", (row, _feedback(batch, student))
    assert row["sandbox"] == "bubblewrap"


@pytest.mark.parametrize(
    "student",
    ["hostile_registry", "hostile_runner_patch", "hostile_late_writer", "hostile_snoop",
     "hostile_spoof", "hostile_static_big", "hostile_batch_killer", "hostile_memory"],
)  # fmt: skip
def test_a_hostile_notebook_gets_nothing_it_did_not_do(batch, student):
    assert batch["rows"][student]["total"] == "0", _feedback(batch, student)


def test_the_answer_key_is_not_importable_inside(batch):
    text = _feedback(batch, "hostile_registry")
    assert "is not available while a notebook is graded" in text
    assert "ddpm_course.grading.registry" in text


def test_the_csv_is_there_and_final_when_the_command_returns(batch):
    assert (batch["out"] / "grades.csv").read_bytes() == batch["csv"]
    assert not list(batch["out"].glob(".*"))  # no temporary file left behind
    assert set(batch["rows"]) == set(HONEST) | set(HOSTILE) | set(map(_id, ROUND2))


def test_the_batch_ran_with_the_privileges_of_its_mode(batch):
    owner = (batch["out"] / "grades.csv").stat().st_uid
    if batch["mode"] == "root":
        assert owner == 0
    else:  # the grader itself ran unprivileged: as nobody when the tests run as root
        assert owner != 0 and (os.geteuid() != 0 or owner == NOBODY)


def test_no_process_of_the_batch_is_alive_afterwards(batch):
    assert batch["left"] == [] and _sandbox_processes() == []


def test_crashes_and_kills_cost_that_notebook_only(batch):
    assert batch["rows"]["hostile_batch_killer"]["status"].startswith("crashed")
    assert "grader-error" not in "".join(
        row["status"] for row in batch["rows"].values()
    )
    text = _feedback(batch, "hostile_batch_killer")
    assert "nothing it left behind is scored" in text
    assert text.count("refused") == 7 and "ALIVE" in text


def test_nothing_private_is_visible(batch):
    text = _feedback(batch, "hostile_snoop")
    assert "BEGIN SOLUTION" not in text and "### " not in text
    for private in [
        "honest_plain",
        str(batch["out"]),
        str(batch["submissions"]),
        "ddpm-course-grade-",
    ]:
        assert private not in text, private
    assert "DENIED" in text
    environment = re.search(r"ENV (\{.*?\})", text).group(1)
    assert set(eval(environment)) <= {  # noqa: S307 (our own test's output)
        "PATH", "HOME", "OMP_NUM_THREADS", "MPLBACKEND", "CUDA_VISIBLE_DEVICES", "TMPDIR",
    }  # fmt: skip


def test_forks_are_limited_and_tmp_and_shm_are_capped(batch):
    text = _feedback(batch, "hostile_resources")
    forked = int(re.search(r"FORKED (\d+)", text).group(1))
    assert forked < 64
    assert text.count("No space left on device") == 2 or "FULL" in text
    assert (
        batch["rows"]["hostile_resources"]["total"] == "10"
    )  # its own work, done honestly


def test_memory_is_limited_for_the_whole_sandbox(batch):
    assert "in all its processes together" in _feedback(batch, "hostile_memory")


def test_printed_text_cannot_fake_the_total(batch):
    text = _feedback(batch, "hostile_spoof")
    totals = re.findall(r"\*\*Total: .*", text)
    assert totals[0].startswith("**Total: 0 / 10 points.**")
    printed = text.split("## What the notebook printed (truncated)")[1]
    fence = re.search(r"^(`{3,})text$", printed, re.M).group(1)
    body = printed.split(fence + "text", 1)[1].rsplit(fence, 1)[0]
    assert max(map(len, re.findall(r"`+", body))) < len(fence)


def test_a_notebook_too_large_to_analyse_gets_a_clear_status(batch):
    assert batch["rows"]["hostile_static_big"]["status"] == "unanalysable"
    assert "did not finish within 4 s" in _feedback(batch, "hostile_static_big")


def test_similar_functions_are_listed_but_cost_nothing_by_default(batch):
    with open(batch["out"] / "similarity.csv", newline="") as handle:
        pairs = list(csv.DictReader(handle))
    assert any(row["student"] == "honest_plain" for row in pairs)
    assert "closest match: another submission of this batch" in _feedback(
        batch, "honest_plain"
    )


# ------------------------------------------------------ the second red team (issue 26)
ROUND2_HONEST = [
    round2.LATIN1_NAME, round2.LONG_NAME, b"honest_chdir.ipynb",
    b"honest_future_annotations.ipynb", b"honest_tqdm_main.ipynb",
    b"hostile_long_expression.ipynb", b"hostile_big_answer.ipynb",
]  # fmt: skip
# E14 keeps what it copied under the default copy policy (flag): see the similarity test, and
# tests/test_grading_robust.py for the zero policy
ROUND2_STUBBED = sorted(
    set(ROUND2) - set(ROUND2_HONEST) - {b"hostile_helper_copy.ipynb"}
)


@pytest.mark.parametrize("name", ROUND2_HONEST)
def test_round2_honest_work_keeps_full_marks_whatever_the_file_name(batch, name):
    """A3, A4 (names), D11 (os.chdir), D12 (deferred annotations), E15 (tqdm.__main__
    named), and A2, F17 (a 600-term dead line, a 40 kB answer: their own work)."""
    student = _id(name)
    assert batch["rows"][student]["total"] == "10", _feedback(batch, student)
    assert batch["rows"][student]["status"] == "ok", _feedback(batch, student)


@pytest.mark.parametrize("name", ROUND2_STUBBED)
def test_round2_attackers_earn_nothing(batch, name):
    student = _id(name)
    assert batch["rows"][student]["total"] == "0", _feedback(batch, student)
    assert "grader-error" not in batch["rows"][student]["status"]


def _batch_files(batch) -> list[Path]:
    """What is left of the grader's temporary folders (its own torch may keep a cache there)."""
    return list(batch["tmp"].glob("ddpm-course-grade-*"))


def test_no_file_of_the_batch_survives_it(batch):
    """A1: 1,200 nested folders (and everything else) gone with the batch."""
    assert _batch_files(batch) == []
    assert "DEPTH 12" in _feedback(batch, "hostile_deep_folders")


def test_latin1_and_long_file_names_become_safe_ids_and_file_names(batch):
    assert _id(round2.LATIN1_NAME) == "M\u00fcller"
    assert (batch["out"] / "feedback" / "M\u00fcller.md").exists()
    assert all(
        len(path.name.encode()) <= 130 for path in (batch["out"] / "feedback").iterdir()
    )


def test_memory_shared_copy_on_write_is_counted(batch):
    """B5: 300 MiB shared by nine processes, 100 MiB more in eight (1100 MiB: more than 512
    beyond the fork server's own, which torch's import makes about 300)."""
    assert batch["rows"]["hostile_cow_fork"]["status"].startswith("crashed")
    assert "in all its processes together" in _feedback(batch, "hostile_cow_fork")


def test_memory_no_process_maps_is_refused(batch):
    """B6: memfd_create and System V shared memory fail with EPERM."""
    text = _feedback(batch, "hostile_memfd")
    assert "MEMFD PermissionError" in text and "SHMGET -1 1" in text


def test_unlinked_files_count_against_the_job_folder_cap(batch):
    """B7: the job folder is a 256 MiB tmpfs: the 7 x 60 MiB held open do not fit."""
    text = _feedback(batch, "hostile_unlinked")
    assert (
        "No space left on device" in text
    )  # its own printing fails too: output.txt is there


def test_keyrings_are_out_of_reach(batch):
    """C9: add_key and keyctl fail with EPERM (and each notebook has a fresh keyring)."""
    text = _feedback(batch, "hostile_keyring")
    assert "ADD_KEY -1 1" in text and "KEYCTL -1 1" in text


def test_no_namespace_can_be_made_inside(batch):
    """C10: unshare of a user namespace, mount, and new PID and mount namespaces: EPERM."""
    text = _feedback(batch, "hostile_userns")
    for probe in ("UNSHARE", "MOUNT", "CLONE"):
        assert f"{probe} -1 1" in text, text


def test_a_copy_moved_into_a_helper_is_compared(batch):
    """E14: a classmate's answer in a helper, the answer a one-line call of it."""
    with open(batch["out"] / "similarity.csv", newline="") as handle:
        pairs = {
            (row["exercise"], row["student"], row["other"])
            for row in csv.DictReader(handle)
        }
    assert (
        "q_posterior_mean_variance",
        "hostile_helper_copy",
        "honest_plain",
    ) in pairs


def test_a_forged_outputs_header_is_refused(batch):
    """F16: a header listing a million empty tensors reads as no outputs."""
    assert batch["rows"]["hostile_header"]["total"] == "0"
    assert "no output" in _feedback(batch, "hostile_header")


def test_a_huge_answer_is_compared_within_the_caps(batch):
    """F17: the copy check reads at most MAX_TOKENS of it, so it costs what a short one does."""
    assert "closest match" in _feedback(batch, _id(b"hostile_big_answer.ipynb"))


def test_a_file_name_cannot_fake_the_total_or_hide_it(batch):
    """F18: a name with newlines, a fake total and an HTML comment opener."""
    student = _id(round2.SPOOF_NAME)
    assert "\n" not in student and batch["rows"][student]["total"] == "0"
    text = _feedback(batch, student)
    heading, _, total = text.splitlines()[:3]
    assert heading.startswith("# 03_elbo: `") and heading.endswith("`")
    assert total.startswith("**Total: 0 / 10 points.**")
    assert not re.search(r"^\*\*Total: 10", text, re.M)
    assert text.count("<!--") == 2 and text.index("<!--", len(heading)) > text.index(
        total
    )


def test_a_busy_sibling_cannot_starve_an_honest_notebook(batch04):
    """B8: 30 busy processes under --jobs 2; the limits are CPU time, the sibling is killed at
    its own budget, and the honest notebooks keep full marks (D13: one logs its loss to a
    file inside training_step)."""
    rows = batch04["rows"]
    assert rows["honest_ch04"]["total"] == "10", _feedback(batch04, "honest_ch04")
    assert rows["honest_ch04_logging"]["total"] == "10", _feedback(
        batch04, "honest_ch04_logging"
    )
    assert rows["hostile_busy"]["total"] == "0"
    assert rows["hostile_busy"]["status"].startswith("timeout")
    assert batch04["left"] == [] and _sandbox_processes() == []
    assert _batch_files(batch04) == []


# ------------------------------------------------- without the sandbox; copy policy; gradebook
def test_grade_refuses_without_bubblewrap_and_says_how_to_install_it(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(grader, "bwrap_path", lambda: None)
    nbformat.write(HONEST["honest_plain"], tmp_path / "a.ipynb")
    code = main(
        [
            "grade",
            str(write_key(tmp_path / "key")),
            str(tmp_path / "a.ipynb"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "apt-get install bubblewrap" in error and "--no-sandbox" in error
    assert not (tmp_path / "o" / "grades.csv").exists()


def test_no_sandbox_is_recorded_and_copy_policy_zero_and_the_gradebook(tmp_path):
    submissions = tmp_path / "s"
    submissions.mkdir()
    copied = CORRECT["q_posterior_mean_variance"]
    own = copied.replace("abar_prev = ", "previous = ").replace("ap = ", "ap = 0 + ")
    own = """def q_posterior_mean_variance(x0, x_t, t, betas):
    alphas = 1 - betas
    cumulative = torch.cumprod(alphas, dim=0)
    previous = torch.nn.functional.pad(cumulative[:-1], (1, 0), value=1.0)
    view = [-1] + [1] * (x0.ndim - 1)
    beta_t = betas[t].reshape(view)
    c_t = cumulative[t].reshape(view)
    p_t = previous[t].reshape(view)
    coef_x0 = beta_t * torch.sqrt(p_t) / (1.0 - c_t)
    coef_xt = (1.0 - p_t) * torch.sqrt(alphas[t].reshape(view)) / (1.0 - c_t)
    variance = beta_t * (1.0 - p_t) / (1.0 - c_t)
    return coef_x0.to(x0.dtype) * x0 + coef_xt.to(x0.dtype) * x_t, variance.to(x0.dtype)"""
    for name, table in {
        "ann": CORRECT,
        "ben": CORRECT,  # the same functions as ann's
        "cat": {**CORRECT, "q_posterior_mean_variance": own},
    }.items():
        nbformat.write(
            notebook(IMPORTS, *functions(table)), submissions / f"{name}.ipynb"
        )
    roster = tmp_path / "roster.csv"
    roster.write_text(
        "student,name,id,sis_user_id,sis_login_id,section\n"
        "ann,Ann A,101,s101,ann,Sec 1\nben,Ben B,102,s102,ben,Sec 1\n"
        "cat,Cat C,103,s103,cat,Sec 2\ndan,Dan D,104,s104,dan,Sec 2\n"
    )
    out = tmp_path / "o"
    arguments = [
        "grade",
        str(write_key(tmp_path / "key")),
        str(submissions),
        "--out",
        str(out),
        "--no-sandbox",
    ]
    arguments += ["--copy-policy", "zero", "--roster", str(roster), "--jobs", "2"]
    assert main(arguments) == 0
    rows = _rows(out / "grades.csv")
    assert {row["sandbox"] for row in rows.values()} == {"none (--no-sandbox)"}
    for student in rows:
        assert (
            "Sandbox: none (--no-sandbox)."
            in (out / "feedback" / f"{student}.md").read_text()
        )
    # ann and ben share every function; those long enough to tell score 0 under policy zero
    assert (
        rows["ann"]["q_posterior_mean_variance"] == "0"
        and "copied" in rows["ann"]["status"]
    )
    assert rows["cat"]["q_posterior_mean_variance"] == "2"
    with open(out / "gradebook.csv", newline="") as handle:
        book = list(csv.reader(handle))
    assert book[0] == [
        "Student",
        "ID",
        "SIS User ID",
        "SIS Login ID",
        "Section",
        "03_elbo",
    ]
    assert book[1] == ["Points Possible", "", "", "", "", "10"]
    assert book[2][:5] == ["Ann A", "101", "s101", "ann", "Sec 1"]
    assert book[4][-1] == rows["cat"]["total"] and book[5] == [
        "Dan D",
        "104",
        "s104",
        "dan",
        "Sec 2",
        "0",
    ]
