# The README's two commands. Both create or reuse .venv (python3 -m venv + pip) and are safe
# to run again: the install step reruns only when a requirements file or pyproject changes.
# It also builds the native kernel into torch's extension cache ($TORCH_EXTENSIONS_DIR if set,
# else ~/.cache/torch_extensions), where lstmkit looks for it at run time.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: run test test-all bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@echo "Building the native CPU kernel now (once, ~30 s), so the first lstmkit train need not"
	$(PY) -m lstmkit.backends.native || echo "lstmkit: continuing without it (auto uses fused)"
	touch $(STAMP)

# First command: set up, train the default task (counting), then predict [5, 6, 7, 8].
run: $(STAMP)
	.venv/bin/lstmkit train --overwrite
	.venv/bin/lstmkit predict 5 6 7 8

# Second command: set up, lint, check formatting, run the tests (slow ones excluded).
test: $(STAMP)
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/python -m pytest -q -m "not slow"

# Everything, the slow end-to-end tests included (CI runs this).
test-all: $(STAMP)
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/python -m pytest -q

bench: $(STAMP)
	$(PY) bench/bench_cpu.py

clean:
	rm -rf .venv runs
