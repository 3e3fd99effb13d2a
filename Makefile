# facealign: `make demo` trains the demo job on embedded synthetic data; `make test` runs every test.
# Both set up what they need first (install.sh: venv, MXNet, Horovod built from source, native/).
VENV ?= .venv
PY := $(VENV)/bin/python
export FACEALIGN_VENV := $(abspath $(VENV))

.PHONY: setup demo demo-3d test bench bench-models bench-data bench-train bench-infer bench-precision bench-recipe bench-widths bench-elastic bench-depth bench-photoreal bench-realtime clean

setup:
	bash install.sh

demo: setup
	$(PY) -m facealign.cli.demo

demo-3d: setup
	$(PY) -m facealign.cli.demo --job jobs/demo-3d.yaml

test: setup
	bash tests/suite.sh $(PY)

bench: bench-models bench-data bench-train bench-infer bench-precision bench-recipe bench-widths bench-elastic bench-depth bench-photoreal bench-realtime

bench-models: setup
	$(PY) bench/models.py --out bench/results/models.json

clean:
	rm -rf build facealign/_native/*.so facealign/_native/*.c *.egg-info .pytest_cache

bench-data: setup
	$(PY) bench/data.py --out bench/results/data.json

bench-train: setup
	$(PY) bench/train.py --out bench/results/train.json

bench-infer: setup
	$(PY) bench/infer.py --reps 3 --out bench/results/infer.json

bench-precision: setup
	$(PY) bench/precision.py --out bench/results/precision.json

bench-recipe: setup
	$(PY) bench/recipe.py --out bench/results/recipe.json

bench-widths: setup
	$(PY) bench/widths.py --out bench/results/widths.json

bench-elastic: setup
	$(PY) bench/elastic.py --out bench/results/elastic.json

bench-depth: setup
	$(PY) bench/depth.py --out bench/results/depth.json

bench-photoreal: setup
	$(PY) bench/photoreal.py --out bench/results/photoreal.json

# needs runs/photo, runs/photo-mobile and runs/photo-mobile-alone (jobs/photo.yaml, jobs/photo-mobile.yaml)
bench-realtime: setup
	$(PY) bench/realtime.py --out bench/results/realtime.json
