# Every target creates/uses .venv and installs with torch pinned to the local CPU build (constraints.txt).
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed

.PHONY: install test test-slow lint demo train-demo evaluate-demo bench clean

DEMO_MODEL := models/hpdm-shapes-demo
DEMO_PROMPT := a red circle moving right slowly on a gray background

$(STAMP): setup.py constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -x tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

lint: $(STAMP)
	.venv/bin/ruff check src tests examples benchmarks
	.venv/bin/ruff format --check src tests examples benchmarks

# The main job: a video (and a contact sheet of every level) from the bundled model. Smooth tile blending:
# the same attributes as the paper's uniform average, fewer visible tile borders (docs/evaluation.md).
demo: $(STAMP)
	$(PY) -m diffusers_hpdm.cli generate "$(DEMO_PROMPT)" --model $(DEMO_MODEL) \
		--blending smooth --out outputs/demo.mp4 --contact-sheet outputs/demo_levels.png --detect

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
	rm -rf .venv build *.egg-info src/*.egg-info
