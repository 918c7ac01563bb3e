"""Open every page of the built book in headless Chromium, as an offline reader would, and check it.

Usage: ``python scripts/browser_test.py [_build/html]`` (``make browser-test`` runs it after
installing Debian's ``chromium`` and ``chromium-driver``). Every page is loaded from disk
(``file://``) with all network names unresolvable, so nothing may come from a CDN. For each page:

* math is typeset: pages with Sphinx math hold MathJax output (``mjx-container``), no MathJax
  error (``mjx-merror``), and no raw ``\\(``, ``\\[`` or ``$$`` in the visible text outside code;
* every ``<img>`` has loaded, with a non-zero natural width;
* the browser console has no errors (level SEVERE);
* every internal link resolves: the target file exists and so does its ``#anchor``; links to this
  repository's files on GitHub or Colab name a file that exists in the checkout;
* a chapter page's Colab launch button opens that chapter's ``.ipynb`` on the configured branch;
* no page shows the Colab install cell (its ``find_spec("ddpm_course")`` text);
* every frame player (``ddpm_course.viz.player``) works: pressing "Next frame" shows the next
  frame and moves the slider, pressing "Play" moves on by itself, and "Pause" stops it; the
  chapters in ``PLAYER_PAGES`` must have one.

A screenshot of each page goes to ``_build/screenshots/``. The exit status is 1 when any check
fails, and every failure is listed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # An offline reader: no host name resolves, so anything fetched from a CDN fails.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--window-size=1280,1600",
]
INSTALL_CELL_TEXT = 'find_spec("ddpm_course")'
RAW_MATH = re.compile(r"\\\(|\\\[|\$\$")
MATHJAX_TIMEOUT_S = 20
# pages that must show a frame player (ddpm_course.viz.player)
PLAYER_PAGES = ("book/01_brownian_sde.html", "book/04_training.html")
PLAYER_WAIT_S = 3  # how long "Play" has to move the frame on (frames every 250 ms)

# Runs in the page: waits for MathJax (when the page loads it) and for every image, then reports.
PAGE_REPORT_JS = r"""
const done = arguments[arguments.length - 1];
const timeoutMs = arguments[0];
const start = Date.now();
document.querySelectorAll('img[loading="lazy"]').forEach(img => { img.loading = "eager"; });
function imagesSettled() {
  return Array.from(document.images).every(img => img.complete);
}
function visibleTextOutsideCode() {
  const clone = document.body.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, mjx-container").forEach(el => el.remove());
  return clone.textContent;
}
function report() {
  const imgs = Array.from(document.images).map(img => ({
    src: img.getAttribute("src"), complete: img.complete, width: img.naturalWidth}));
  done({
    mathjaxLoaded: !!(window.MathJax && window.MathJax.startup),
    mathElements: document.querySelectorAll(".math").length,
    mjxContainers: document.querySelectorAll("mjx-container").length,
    mjxErrors: Array.from(document.querySelectorAll("mjx-merror"))
      .map(el => el.getAttribute("data-mjx-error") || el.textContent).slice(0, 5),
    visibleText: visibleTextOutsideCode(),
    bodyText: document.body.textContent,
    images: imgs,
    links: Array.from(document.querySelectorAll("a[href]")).map(a => ({
      raw: a.getAttribute("href"), href: a.href, text: a.textContent.trim().slice(0, 60)})),
    ids: Array.from(document.querySelectorAll("[id]")).map(el => el.id),
  });
}
function waitForImages() {
  if (imagesSettled() || Date.now() - start > timeoutMs) { report(); }
  else { setTimeout(waitForImages, 100); }
}
let loaded = null;
function waitForMathJax() {
  // MathJax's script is deferred: by the load event it has run, or failed to load
  // (a short grace period covers an async script)
  loaded = loaded || Date.now();
  const hasMathJaxScript = Array.from(document.scripts).some(s => /mathjax/i.test(s.src));
  if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
    window.MathJax.startup.promise.then(waitForImages, waitForImages);
  } else if (!hasMathJaxScript || Date.now() - loaded > 2000) {
    waitForImages();
  } else {
    setTimeout(waitForMathJax, 100);
  }
}
if (document.readyState === "complete") { waitForMathJax(); }
else { window.addEventListener("load", waitForMathJax); }
"""


class _Ids(HTMLParser):
    """Every ``id`` (and ``<a name>``) of an HTML file: the anchors a link may point at."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key == "id" or (tag == "a" and key == "name"):
                self.ids.add(value or "")


_ID_CACHE: dict[Path, set[str]] = {}


def anchors_of(path: Path) -> set[str]:
    if path not in _ID_CACHE:
        parser = _Ids()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        _ID_CACHE[path] = parser.ids
    return _ID_CACHE[path]


def book_config() -> dict:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = config["repository"]
    owner_name = urlsplit(repo["url"]).path.strip("/")
    return {
        "repo": owner_name,
        "branch": repo.get("branch", "main"),
        "path_to_book": repo.get("path_to_book", ".").strip("/").removeprefix("."),
        "colab": config["launch_buttons"]["colab_url"].rstrip("/"),
    }


def repository_file_of(url: str, config: dict) -> str | None:
    """The repository path a GitHub / Colab URL of this repository's branch names, else None."""
    prefixes = (
        f"https://github.com/{config['repo']}/blob/{config['branch']}/",
        f"{config['colab']}/github/{config['repo']}/blob/{config['branch']}/",
    )
    for prefix in prefixes:
        if url.startswith(prefix):
            return unquote(url[len(prefix) :].split("#")[0].split("?")[0])
    return None


def check_links(page: Path, html_root: Path, report: dict, config: dict) -> list[str]:
    problems = []
    own_ids = set(report["ids"])
    for link in report["links"]:
        raw, href = link["raw"], link["href"]
        if raw.startswith(("mailto:", "javascript:")) or raw in ("#", ""):
            continue
        parts = urlsplit(href)
        if parts.scheme == "file":
            target = Path(unquote(parts.path))
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                problems.append(
                    f"link {raw!r} ({link['text']!r}): {target} does not exist"
                )
                continue
            if not parts.fragment:
                continue
            anchor = unquote(parts.fragment)
            if target.resolve() == page.resolve():
                ids = own_ids
            elif target.suffix == ".html":
                ids = anchors_of(target)
            else:
                continue
            if anchor not in ids:
                problems.append(
                    f"link {raw!r}: no #{anchor} on {target.relative_to(html_root)}"
                )
        elif parts.scheme in ("http", "https"):
            repo_path = repository_file_of(href, config)
            if repo_path is not None and not (ROOT / repo_path).exists():
                problems.append(
                    f"link {raw!r} names {repo_path}, which is not in the repository"
                )
    return problems


def check_colab_button(
    page: Path, html_root: Path, report: dict, config: dict
) -> list[str]:
    """A chapter page (book/NN_*.html) must launch its own notebook in Colab."""
    relative = page.relative_to(html_root)
    if not re.fullmatch(r"book/\d\d_[^/]+\.html", relative.as_posix()):
        return []
    notebook = relative.with_suffix(".ipynb").as_posix()
    if config["path_to_book"]:
        notebook = f"{config['path_to_book']}/{notebook}"
    expected = (
        f"{config['colab']}/github/{config['repo']}/blob/{config['branch']}/{notebook}"
    )
    colab_links = [
        link["href"]
        for link in report["links"]
        if link["href"].startswith(config["colab"])
    ]
    problems = []
    if expected not in colab_links:
        problems.append(
            f"no Colab launch button to {expected} (Colab links: {colab_links})"
        )
    if not (ROOT / notebook).exists():
        problems.append(
            f"the Colab button opens {notebook}, which is not in the repository"
        )
    return problems


def check_page(
    page: Path, html_root: Path, report: dict, console: list[dict], config
) -> list:
    problems = []
    if report["mathElements"]:
        if not report["mjxContainers"]:
            loaded = "loaded" if report["mathjaxLoaded"] else "did not load"
            problems.append(
                f"{report['mathElements']} math elements but no MathJax output "
                f"(MathJax {loaded})"
            )
        if report["mjxErrors"]:
            problems.append(f"MathJax errors: {report['mjxErrors']}")
    raw = RAW_MATH.search(report["visibleText"])
    if raw:
        around = report["visibleText"][max(0, raw.start() - 30) : raw.end() + 40]
        problems.append(f"raw math in the visible text: {' '.join(around.split())!r}")
    for image in report["images"]:
        if not (image["complete"] and image["width"] > 0):
            problems.append(f"image {image['src']!r} did not load")
    for entry in console:
        if entry.get("level") == "SEVERE":
            problems.append(f"console error: {entry.get('message', '')[:300]}")
    problems += check_links(page, html_root, report, config)
    problems += check_colab_button(page, html_root, report, config)
    if INSTALL_CELL_TEXT in report["bodyText"]:
        problems.append(f"the page shows the install cell ({INSTALL_CELL_TEXT!r})")
    return problems


def check_players(driver, name: str) -> tuple[list[str], int]:
    """Press "Next frame", then "Play" and "Pause", on every player of the page; the shown
    frame (the image's data URI) and the slider must move. Returns the problems and the number
    of players."""
    from selenium.webdriver.common.by import By

    players = driver.find_elements(By.CSS_SELECTOR, "div.animation")
    problems = []
    if name in PLAYER_PAGES and not players:
        problems.append("no frame player on this page (ddpm_course.viz.player)")
    for number, element in enumerate(players, start=1):
        image = element.find_element(By.CSS_SELECTOR, "img")
        slider = element.find_element(By.CSS_SELECTOR, "input[type=range]")

        def button(title: str, element=element):
            return element.find_element(By.CSS_SELECTOR, f'button[title="{title}"]')

        def state(image=image, slider=slider) -> tuple[str, int]:
            return image.get_attribute("src"), int(slider.get_attribute("value"))

        driver.execute_script("arguments[0].scrollIntoView();", element)
        button("First frame").click()
        first_src, first_value = state()
        button("Next frame").click()
        next_src, next_value = state()
        if next_value != first_value + 1 or next_src == first_src:
            problems.append(
                f"player {number}: 'Next frame' went from frame {first_value} to "
                f"{next_value} (image changed: {next_src != first_src})"
            )
        button("Play").click()
        deadline = time.perf_counter() + PLAYER_WAIT_S
        while state()[1] == next_value and time.perf_counter() < deadline:
            time.sleep(0.05)
        button("Pause").click()
        played_src, played_value = state()
        if played_value <= next_value or played_src == next_src:
            problems.append(
                f"player {number}: 'Play' did not move on from frame {next_value} in "
                f"{PLAYER_WAIT_S} s"
            )
        time.sleep(0.6)  # more than two frame intervals: a paused player stays put
        if state()[1] != played_value:
            problems.append(f"player {number}: 'Pause' did not stop it")
    return problems, len(players)


def pages_of(html_root: Path) -> list[Path]:
    skip = {"_static", "_sources", "_images", "_downloads", "_panels_static"}
    return sorted(
        path
        for path in html_root.rglob("*.html")
        if not skip.intersection(path.relative_to(html_root).parts)
    )


def make_driver(user_data_dir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        sys.exit(
            "chromium and chromedriver are needed: `make browser-test` installs them"
        )
    options.binary_location = binary
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        options=options, service=Service(executable_path=driver_path)
    )
    driver.set_script_timeout(MATHJAX_TIMEOUT_S + 10)
    driver.set_page_load_timeout(60)
    return driver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", nargs="?", default="_build/html", type=Path)
    parser.add_argument("--screenshots", type=Path, default=None)
    args = parser.parse_args(argv)
    html_root = args.html.resolve()
    if not (html_root / "index.html").exists():
        sys.exit(f"{html_root}/index.html does not exist: run `make book` first")
    screenshots = (args.screenshots or html_root.parent / "screenshots").resolve()
    screenshots.mkdir(parents=True, exist_ok=True)
    config = book_config()
    pages = pages_of(html_root)
    failures: dict[str, list[str]] = {}
    built = {page.relative_to(html_root).as_posix() for page in pages}
    for name in PLAYER_PAGES:
        if name not in built:
            failures[name] = ["not built: this page must show a frame player"]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="browser-test-") as user_data_dir:
        driver = make_driver(Path(user_data_dir))
        try:
            for page in pages:
                name = page.relative_to(html_root).as_posix()
                driver.get(page.as_uri())
                report = driver.execute_async_script(
                    PAGE_REPORT_JS, MATHJAX_TIMEOUT_S * 1000
                )
                console = driver.get_log("browser")
                shot = screenshots / (
                    name.removesuffix(".html").replace("/", "__") + ".png"
                )
                driver.save_screenshot(str(shot))
                problems = check_page(page, html_root, report, console, config)
                player_problems, n_players = check_players(driver, name)
                problems += player_problems
                status = "ok" if not problems else f"{len(problems)} problem(s)"
                print(
                    f"{name}: {status} ({report['mjxContainers']} formulas typeset, "
                    f"{len(report['images'])} images, {len(report['links'])} links,"
                    f" {n_players} players)"
                )
                if problems:
                    failures[name] = problems
        finally:
            driver.quit()
    print(
        f"{len(pages)} pages in {time.perf_counter() - start:.1f} s; screenshots in {screenshots}"
    )
    for name, problems in failures.items():
        print(f"\nFAIL {name}")
        for problem in problems[:20]:
            print(f"  - {problem}")
        if len(problems) > 20:
            print(f"  ... and {len(problems) - 20} more")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
