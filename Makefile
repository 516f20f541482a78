# make data (once), make train DATA=... PRESET=... ARGS="...", make submission, then upload submission/submission.zip
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
SHARED_DATA ?= ../shared/data

# The first target is what a bare `make` runs: the list of commands.
.PHONY: help
help:
	@echo "make data               build $(DATA) from the shared PBC images in $(SHARED_DATA)"
	@echo "make train              train PRESET=$(PRESET) into $(WEIGHTS)/; PRESET=cpu on a CPU or offline (how long: BENCHMARKS.md)"
	@echo "make submission         zip model.py and the weights, check the zip as the scorer runs it, write $(SUBMISSION)"
	@echo "make check-submission   check an existing $(SUBMISSION) the way the scorer runs it"
	@echo "make evaluate           score the weights on their held-out images, clean and corrupted, into $(REPORTS)/"
	@echo "make outliers           find the images that are not blood cells or are copies, into $(REPORTS)/"
	@echo "make eda                pictures of the data (class counts, brightness, colour, samples) into $(REPORTS)/"
	@echo "make test               the whole test suite (how long: BENCHMARKS.md)"
	@echo "make test-fast          the tests that need no training"
	@echo "make clean              delete submission/, $(REPORTS)/ and the test cache"
	@echo "make help               this list"
	@echo "Variables: DATA, PRESET, WEIGHTS, SUBMISSION, REPORTS, ARGS, RESUME=1, OVERWRITE=1 (see README.md)"

.PHONY: train submission check-submission evaluate outliers eda test test-fast clean

# The virtual environment is rebuilt whenever requirements.txt is newer than it.
.venv/installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

.PHONY: data
data: $(DATA)
	@echo "$(DATA) is ready; next: make train (make train PRESET=cpu on a CPU or offline)"

# A file, so an existing one (the challenge's own, say) is never rebuilt over; written under a
# temporary name first, so an interrupted build leaves nothing that looks finished.
$(DATA): | .venv/installed
	@test -f $(SHARED_DATA)/build_training_set.py || { echo "no $(SHARED_DATA)/build_training_set.py: put the challenge's training_set.npz at $(DATA) instead, or pass SHARED_DATA=folder"; exit 1; }
	mkdir -p $(dir $(DATA))
	$(PY) $(SHARED_DATA)/build_training_set.py $(DATA).tmp.npz
	mv $(DATA).tmp.npz $(DATA)

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

# the tests that train nothing for long: those marked slow are left out
test-fast: .venv/installed
	$(PY) -m pytest -q --durations=5 -m "not slow" tests

clean:
	rm -rf submission reports .pytest_cache
