# The two commands of the README: `make test` and `make book`. Each creates .venv with pip and
# installs what it needs first (again only when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS = $(wildcard book/[0-9]*.ipynb solutions/*.ipynb exercises/*.ipynb)
# two pytest workers with one torch thread each: on 2 cores, 2 threads per worker wait on each other
PYTEST = OMP_NUM_THREADS=1 $(BIN)/python -m pytest -p no:cacheprovider -n 2 --dist loadfile

.PHONY: test lint unit notebooks book browser-test clean sync sandbox-deps data-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[book,test]'
	touch $(STAMP)

test: lint unit notebooks

# bubblewrap, the grader's sandbox (tests/test_hostile.py), and libseccomp, which compiles the
# notebooks' seccomp filter; installed with apt when missing
sandbox-deps:
	@command -v bwrap >/dev/null && ldconfig -p | grep -q 'libseccomp\.so\.2' || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq bubblewrap libseccomp2; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq bubblewrap libseccomp2; fi; }
	@bwrap --version

# Fashion-MNIST, the image data of chapters 04-10: Debian's dataset-fashion-mnist puts the
# original IDX files in /usr/share/datasets/fashion-mnist (nothing downloads at run time);
# installed with apt when missing. A folder named by DDPM_COURSE_DATA_DIR replaces it.
FASHION_DIR := /usr/share/datasets/fashion-mnist
data-deps:
	@if [ -n "$$DDPM_COURSE_DATA_DIR" ]; then echo "Fashion-MNIST from $$DDPM_COURSE_DATA_DIR"; \
	elif [ ! -f $(FASHION_DIR)/t10k-labels-idx1-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq dataset-fashion-mnist; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq dataset-fashion-mnist; fi; fi
	@ls $${DDPM_COURSE_DATA_DIR:-$(FASHION_DIR)} >/dev/null

# ruff's settings (rules, 88 columns, notebooks included) are in pyproject.toml.
LINT_PATHS = ddpm_course tests scripts book/[0-9]*.ipynb solutions exercises
lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

unit: $(STAMP) sandbox-deps data-deps
	DDPM_COURSE_PROFILE=quick $(PYTEST) tests

notebooks: $(STAMP) data-deps
	@if [ -n "$(NOTEBOOKS)" ]; then \
	  DDPM_COURSE_PROFILE=quick $(PYTEST) --nbval-lax --nbval-cell-timeout=600 $(NOTEBOOKS); \
	else echo "no notebooks to run"; fi

book: $(STAMP) data-deps
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "built _build/html/index.html"

# The built book in headless Chromium, offline (scripts/browser_test.py says what it checks);
# installs Debian's chromium and chromium-driver when missing. Screenshots: _build/screenshots/.
browser-test: $(STAMP)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends chromium chromium-driver; }
	$(BIN)/python scripts/browser_test.py _build/html

clean:
	rm -rf _build $(VENV)

# Regenerate what is derived from sources: chapter .ipynb from their .md, exercises from solutions.
sync: $(STAMP)
	$(BIN)/jupytext --sync book/[0-9]*.md
	$(BIN)/ddpm-course assign solutions exercises
