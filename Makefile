# datascale: the two commands a person needs.
#   make study   set up .venv and run the demo scaling study end to end
#   make test    set up .venv and run the whole test suite (what CI runs)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup study findings axes test test-fast bench readme clean

setup: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel

# Re-install when the project definition or the pins change.
$(STAMP): $(VENV)/bin/python pyproject.toml constraints.txt
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,notebook]'
	touch $(STAMP)

study: $(STAMP)
	$(VENV)/bin/datascale study configs/studies/demo.yaml

# The findings study: every task fine-tuned long enough to leave its floor (~71 min on 2 cores).
findings: $(STAMP)
	$(VENV)/bin/datascale study configs/studies/findings.yaml

# The paper's ablations on the synthetic world (docs/axes.md): class count, then capacity (~45 min).
axes: $(STAMP)
	$(VENV)/bin/datascale study configs/studies/classes.yaml
	$(VENV)/bin/datascale study configs/studies/capacity.yaml

# The README's result sections, copied from the studies' reports (run `make study` first;
# the findings block is refreshed when study-findings/ has a report).
readme: $(STAMP)
	$(PY) -m analysis.readme study/results/report.md README.md
	if [ -f study-findings/results/report.md ]; then \
	  $(PY) -m analysis.readme study-findings/results/report.md README.md findings; fi

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	for script in benchmarks/bench_*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info study study-findings study-classes study-capacity study-selftrain
