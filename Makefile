# make train DATA=... PRESET=... ARGS="..."   then   make submission   then upload submission/submission.zip
PYTHON ?= python3
PY := .venv/bin/python
DATA ?= data/training_set.npz
PRESET ?= seed
WEIGHTS ?= weights
SUBMISSION ?= submission/submission.zip
ARGS ?=
REPORTS ?= reports
RESUME ?=
OVERWRITE ?=

.PHONY: train submission check-submission evaluate outliers eda test clean

# The virtual environment is rebuilt whenever requirements.txt is newer than it.
.venv/installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

train: .venv/installed
	$(PY) train.py --data $(DATA) --preset $(PRESET) --out $(WEIGHTS) $(if $(RESUME),--resume) $(if $(OVERWRITE),--overwrite) $(ARGS)

submission: .venv/installed
	$(PY) submission.py --weights $(WEIGHTS) --data $(DATA) --out $(SUBMISSION)

check-submission: .venv/installed
	$(PY) submission.py --check $(SUBMISSION) --weights $(WEIGHTS) --data $(DATA)

evaluate: .venv/installed
	$(PY) evaluate.py --data $(DATA) --weights $(WEIGHTS) --out $(REPORTS) $(ARGS)

outliers: .venv/installed
	$(PY) outliers.py --data $(DATA) --out $(REPORTS)

eda: .venv/installed
	$(PY) eda.py --data $(DATA) --out $(REPORTS)

# --durations: the ten slowest tests are listed at the end, to keep CI well inside its limit
test: .venv/installed
	$(PY) -m pytest -q --durations=10 tests

clean:
	rm -rf submission reports .pytest_cache
