# Every target creates/uses .venv and installs exactly requirements.lock (torch pinned to the local CPU build).
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed
LOCK := requirements.lock
PIP_COMPILE := .venv-lock/bin/pip-compile

.PHONY: install lock test test-matrix test-slow lint demo train-demo evaluate-demo bench clean

DEMO_MODEL := models/hpdm-shapes-demo
DEMO_PROMPT := a red circle moving right slowly on a gray background

$(STAMP): setup.py $(LOCK)
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q -c $(LOCK) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Re-resolve every transitive dependency of .[dev] to the newest versions setup.py allows (torch from constraints.txt).
# pip-tools lives in its own venv so that .venv holds exactly the lock.
lock:
	test -x $(PIP_COMPILE) || (python3 -m venv .venv-lock && .venv-lock/bin/pip install -q "pip-tools==7.6.2")
	$(PIP_COMPILE) --quiet --upgrade --extra dev --strip-extras --allow-unsafe --no-emit-index-url \
		--no-emit-find-links --no-emit-trusted-host --constraint constraints.txt --output-file $(LOCK) setup.py

test: $(STAMP)
	$(PY) -m pytest -q -x tests

# The fast suite under every ATen CPU kernel set this CPU has (default, avx2, avx512) x 1 and 2 threads.
test-matrix: $(STAMP)
	$(PY) tests/cpu_matrix.py

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

lint: $(STAMP)
	.venv/bin/ruff check src tests examples benchmarks
	.venv/bin/ruff format --check src tests examples benchmarks

# The main job: a video (and a contact sheet of every level) from the bundled model, with the pipeline's defaults
# (smooth tile blending: the same attributes as the paper's uniform average, half the seam score; docs/evaluation.md).
demo: $(STAMP)
	$(PY) -m diffusers_hpdm.cli generate "$(DEMO_PROMPT)" --model $(DEMO_MODEL) \
		--out outputs/demo.mp4 --contact-sheet outputs/demo_levels.png --detect

# Retrain the bundled model from scratch (see docs/training.md), then evaluate it and refresh its model card.
train-demo: $(STAMP)
	$(PY) examples/train_demo.py --output_dir $(DEMO_MODEL)

evaluate-demo: $(STAMP)
	$(PY) -m diffusers_hpdm.cli evaluate --model $(DEMO_MODEL) --num-videos 64 --compile --out outputs/demo_eval.json

bench: $(STAMP)
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_sampling.py
	$(PY) benchmarks/bench_scale.py

clean:
	rm -rf .venv .venv-lock build *.egg-info src/*.egg-info
