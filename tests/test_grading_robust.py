"""The grader's own parts against what a notebook can make them read (issue 26), without the
sandbox: trees deeper than the recursion limit, file names of any bytes, forged output headers,
expressions too deep for a recursive walk, answers hidden in helpers, huge answers, modules
whose import runs a program, and deferred annotations. tests/test_hostile.py grades the same
attacks in the sandbox, in a batch beside honest notebooks.
"""

from __future__ import annotations

import ast
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch
from safetensors.torch import save

from ddpm_course.cli import main
from ddpm_course.grading import jobfiles, similarity
from ddpm_course.grading.integrity import find_violations
from ddpm_course.grading.report import SubmissionGrade, feedback_text
from ddpm_course.grading.students import (
    collect_submissions,
    file_stem,
    remove_tree,
    student_id,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
import hostile_round2 as round2  # noqa: E402
from elbo_key import write_key  # noqa: E402  (chapter 03's six-exercise key)


def _deep_tree(top: Path, depth: int, name: str = "d") -> None:
    folder = os.open(top, os.O_RDONLY)
    for level in range(depth):
        os.mkdir(name, dir_fd=folder)
        inner = os.open(name, os.O_RDONLY, dir_fd=folder)
        os.close(folder)
        folder = inner
        if level == depth // 2:
            os.symlink("/etc", "link", dir_fd=folder)
    with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, dir_fd=folder), "w") as leaf:
        leaf.write("x")
    os.close(folder)


def test_remove_tree_takes_a_tree_deeper_than_the_recursion_limit(tmp_path):
    """A1: 1,500 levels of 200-character names (paths far past PATH_MAX), one unreadable."""
    top = tmp_path / "job"
    top.mkdir()
    try:
        _deep_tree(top, 1500, "n" * 200)
        (top / ("n" * 200)).chmod(0o000)
        remove_tree(top)
        assert not top.exists() and Path("/etc").is_dir()
    finally:  # pytest's own clean-up of tmp_path is recursive
        if top.exists():
            os.system(f"rm -rf {top}")


def test_student_ids_are_printable_capped_and_distinct(tmp_path):
    """A3, A4, F18: Latin-1, 246 characters, newlines; the same name in UTF-8 and Latin-1."""
    names = [round2.LATIN1_NAME, "Müller.ipynb".encode(), round2.LONG_NAME]
    names += [round2.SPOOF_NAME.replace(b"\n", b"\t")]
    for name in names:
        open(os.path.join(os.fsencode(tmp_path), name), "w").close()
    found = collect_submissions([tmp_path])
    assert len(found) == 4 and "Müller" in found
    for student in found:
        assert student.isprintable() and len(student) <= 110
        assert len(f".{file_stem(student)}.md.12345678.tmp".encode()) < 255
    assert student_id(Path(os.fsdecode(round2.SPOOF_NAME))).count("\n") == 0


def test_feedback_of_any_student_id_is_written_as_utf8(tmp_path):
    student = student_id(Path(os.fsdecode(round2.LATIN1_NAME)))
    result = SubmissionGrade(student, tmp_path, [])
    text = feedback_text(result, "03_elbo", {}, True)
    assert text.splitlines()[0] == "# 03_elbo: `` Müller ``" or "Müller" in text
    text.encode("utf-8")


def test_a_forged_safetensors_header_is_refused_before_it_is_parsed(tmp_path):
    """F16: a 55 MiB header listing a million empty tensors costs nothing to refuse."""
    entry = '{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
    header = (
        "{" + ",".join(f'"{n}.0":{entry}' for n in range(1_000_000)) + "}"
    ).encode()
    path = tmp_path / "forged.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    start = time.process_time()
    assert jobfiles.load_outputs(path, max_entries=10) == {}
    assert time.process_time() - start < 2.0  # reading 55 MiB; parsing it took ~18 s
    honest = tmp_path / "honest.safetensors"
    honest.write_bytes(save({"0.0": torch.ones(3), "1.0": torch.zeros(2)}))
    assert set(jobfiles.load_outputs(honest, max_entries=2)) == {"0.0", "1.0"}
    assert jobfiles.load_outputs(honest, max_entries=1) == {}


def test_the_tokenizer_reads_an_expression_deeper_than_the_recursion_limit():
    """A2: a 600-term sum (a recursive walk needs thousands of frames)."""
    source = "def f(x0):\n    unused = " + " + ".join(["x0"] * 900) + "\n    return x0"
    function = ast.parse(source).body[0]
    found = similarity.tokens(function)
    assert found[:3] == ["def", "v0", "Assign"] and found.count("v0") == 902
    assert len(similarity.tokens(function, limit=100)) == 100


def test_the_copy_check_follows_the_helpers_an_answer_calls():
    """E14: the answer a one-line call of a helper holding a classmate's code."""
    body = (
        "    a = torch.cumprod(1 - b, 0)\n    p = torch.cat([torch.ones(1), a[:-1]])\n"
        "    s = (-1,) + (1,) * (x.dim() - 1)\n    m = (b[t] * p[t].sqrt() / (1 - a[t]))"
        ".view(s) * x + ((1 - p[t]) * (1 - b[t]).sqrt() / (1 - a[t])).view(s) * y\n"
        "    return m, (b[t] * (1 - p[t]) / (1 - a[t])).view(s)\n"
    )
    honest = [f"def answer(x, y, t, b):\n{body}"]
    moved = [
        f"def _helper(x, y, t, b):\n{body}",
        "def _unrelated():\n    return 1",
        "def answer(x, y, t, b):\n    return _helper(x, y, t, b)",
    ]
    mine = similarity.answer_functions(moved, ["answer"])["answer"]
    assert [name for name, _ in mine] == ["answer", "_helper"]
    theirs = similarity.answer_functions(honest, ["answer"])["answer"]
    units = similarity._units(mine, set()), similarity._units(theirs, set())
    assert similarity._closest(*units) == 1.0
    # a helper the assignment itself provides is nobody's copy
    assert similarity._units(mine, {tuple(theirs[0][1])}) == []


def test_the_copy_check_caps_tokens_and_time_and_states_its_cost():
    """F17: a 1.8 MB answer is read as MAX_TOKENS tokens; 100 students at the caps finish
    within the time limit; a limit reached marks the rest "not compared"."""
    lines = "".join(f"    v{i} = x * {i} + y[{i}]\n" for i in range(60_000))
    huge = f"def answer(x, y):\n{lines}    return x\n"
    assert len(huge) > 1_800_000
    start = time.process_time()
    found = similarity.answer_functions([huge], ["answer"])["answer"]
    assert len(found[0][1]) == similarity.MAX_TOKENS
    tokenised = time.process_time() - start

    class Result:
        def __init__(self, student, functions):
            self.student, self.functions, self.statuses = student, functions, set()
            self.exercises = [type("G", (), {"name": "q_sample", "similarity": ""})()]

    def batch(size):
        results = []
        for student in range(size):
            own = [(t if i % 7 else f"{t}{student}") for i, t in enumerate(found[0][1])]
            results.append(Result(f"s{student}", {"q_sample": [("answer", own)]}))
        return results

    results = batch(100)
    start = time.process_time()
    similarity.apply_similarity(results, {"q_sample": 1}, "flag", 0.9)
    seconds = time.process_time() - start
    print(
        f"tokenising 1.8 MB: {tokenised:.2f} s; 100 students at the cap: {seconds:.2f} s"
    )
    assert all("closest match" in r.exercises[0].similarity for r in results)
    results = batch(5)
    similarity.apply_similarity(results, {"q_sample": 1}, "flag", 0.9, time_limit=0.0)
    assert all("not compared" in r.exercises[0].similarity for r in results)


def test_the_static_check_never_imports_a_module_to_follow_a_chain():
    """E15: ``tqdm.__main__`` (whose import runs tqdm's command line) is judged by its text."""
    code = (
        "import sys, tqdm\n"
        "from ddpm_course.grading.integrity import find_violations\n"
        "report = find_violations(['import tqdm', 'def f(x):\\n    if x is None:\\n"
        "        return tqdm.__main__\\n    return x'], ['f'])\n"
        "print(report, 'tqdm.__main__' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.stdout.strip() == "{'f': []} False", result.stderr[-2000:]


def test_deferred_annotations_are_not_uses():
    """D12: under ``from __future__ import annotations`` (its cell or an earlier one) a hint
    naming what is never imported is fine; without it, it is a use."""
    function = "def f(x: Tensor) -> Tensor:\n    y: Tensor = x\n    return y"
    deferred = find_violations(["from __future__ import annotations", function], ["f"])
    assert deferred == {"f": []}
    evaluated = find_violations([function], ["f"])
    assert any("never defines" in finding for finding in evaluated["f"])
    hidden = "def f(x: __import__('os')) -> int:\n    return x"
    flagged = find_violations(["from __future__ import annotations", hidden], ["f"])
    assert any("__import__" in finding for finding in flagged["f"])


def test_open_in_an_answer_is_not_a_finding():
    """D13: a training step that logs its loss to a file."""
    step = "def f(x):\n    with open('log.txt', 'a') as log:\n        log.write('1')\n    return x"
    assert find_violations([step], ["f"]) == {"f": []}


@pytest.mark.parametrize(
    "name",
    [b"hostile_deep_folders.ipynb", round2.SPOOF_NAME, b"hostile_helper_copy.ipynb"],
)
def test_without_the_sandbox_the_batch_completes_and_leaves_nothing(tmp_path, name):
    """A1 and F18 with --no-sandbox: the job folder is a real folder, removed without
    recursion; the CSV and every feedback file are written. E14 under ``--copy-policy zero``:
    the answer that calls a copy of a classmate's in a helper scores 0 for it."""
    namespace = {
        "__file__": str(ROOT / "tests/fixtures/submissions/make_submissions.py")
    }
    source = (ROOT / "tests/fixtures/submissions/make_submissions.py").read_text()
    exec(source.split("NAMES = list(CORRECT)")[0], namespace)
    correct = namespace["CORRECT"]
    stubs = {n: f"def {n}(*args):\n    raise NotImplementedError" for n in correct}

    def notebook(*cells):
        nb = nbformat.v4.new_notebook()
        nb.cells = [
            nbformat.v4.new_code_cell(c, id=f"c{i}") for i, c in enumerate(cells)
        ]
        return nb

    notebooks = round2.chapter03(correct, stubs, notebook, {"keyctl": 0, "add_key": 0})
    submissions, temporary = tmp_path / "s", tmp_path / "tmp"
    submissions.mkdir()
    temporary.mkdir()
    for each in (name, round2.LATIN1_NAME):
        with open(os.path.join(os.fsencode(submissions), each), "w") as handle:
            nbformat.write(notebooks[each], handle)
    arguments = ["grade", str(write_key(tmp_path / "key")), str(submissions)]
    arguments += ["--out", str(tmp_path / "o"), "--no-sandbox", "--timeout", "60"]
    arguments += ["--copy-policy", "zero"]
    import tempfile

    tempfile.tempdir = str(temporary)
    try:
        assert main(arguments) == 0
    finally:
        tempfile.tempdir = None
        if list(temporary.iterdir()):  # pytest's own clean-up of tmp_path is recursive
            os.system(f"rm -rf {temporary}/*")
    with open(tmp_path / "o" / "grades.csv", newline="") as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    assert len(rows) == 2
    if name == b"hostile_helper_copy.ipynb":  # both copies score 0 for that answer
        assert rows["hostile_helper_copy"]["q_posterior_mean_variance"] == "0"
        assert "copied" in rows["hostile_helper_copy"]["status"]
    else:
        assert rows["Müller"]["total"] == "10"
    assert len(list((tmp_path / "o" / "feedback").iterdir())) == 2
    assert list(temporary.iterdir()) == []
