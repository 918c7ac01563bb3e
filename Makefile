# The two commands of the README: `make test` and `make book`. Each creates .venv with pip and
# installs what it needs first (again only when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS = $(wildcard book/[0-9]*.ipynb solutions/*.ipynb exercises/*.ipynb)
# two pytest workers with one torch thread each: on 2 cores, 2 threads per worker wait on each other
PYTEST = OMP_NUM_THREADS=1 $(BIN)/python -m pytest -p no:cacheprovider -n 2 --dist loadfile

.PHONY: test unit notebooks book clean sync

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[book,test]'
	touch $(STAMP)

test: unit notebooks

unit: $(STAMP)
	DDPM_COURSE_PROFILE=quick $(PYTEST) tests

notebooks: $(STAMP)
	@if [ -n "$(NOTEBOOKS)" ]; then \
	  DDPM_COURSE_PROFILE=quick $(PYTEST) --nbval-lax --nbval-cell-timeout=600 $(NOTEBOOKS); \
	else echo "no notebooks to run"; fi

book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "built _build/html/index.html"

clean:
	rm -rf _build $(VENV)

# Regenerate what is derived from sources: chapter .ipynb from their .md, exercises from solutions.
sync: $(STAMP)
	$(BIN)/jupytext --sync book/[0-9]*.md
	$(BIN)/ddpm-course assign solutions exercises
