# Set-up and the commands of the README. Every target creates .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Two test workers on two cores; torch's own threads would only fight them.
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

.PHONY: venv demo inspect test test-slow bench bench-overhead gpu-check gpu-check-wheels clean screenshot bench-methods bench-ofa

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: venv
	$(PY) -m nas.search --space inception --budget 0.5G --out runs/demo-$$(date +%Y%m%d-%H%M%S)

inspect: venv
	for space in resnet inception agd; do $(PY) -m nas.inspect --space $$space --config max || exit 1; \
		$(PY) -m nas.inspect --space $$space --config min || exit 1; echo; done

bench: venv
	$(PY) bench/ofa_sr4x.py --finetune-steps 500
	$(PY) bench/search_overhead.py --shipped
	$(PY) bench/method_sr4x.py --method kd
	$(PY) bench/method_sr4x.py --method prune --space inception
	$(PY) bench/method_sr4x.py --method dmask --space resnet
	$(PY) bench/sampler_efficiency.py

# Once-for-all on sr4x, both shipped families, its JSON kept (about an hour on 2 CPU cores)
bench-ofa: venv
	$(PY) bench/ofa_sr4x.py --families resnet inception --finetune-steps 500 --json bench/results/ofa_sr4x.json $(ARGS)

# Five methods at three budgets through nas.search (hours on 2 CPU cores; continue with ARGS=--resume)
bench-methods: venv
	$(PY) bench/methods.py --json bench/results/methods.json $(ARGS)

# Per-trial cost as a search grows: 2,000-trial searches, three repeats, and old against new code (about an hour)
bench-overhead: venv
	$(PY) bench/search_overhead.py --trials 2000 --repeats 3 --compare $(COMPARE)

COMPARE ?= f64b9f0

test: venv
	$(TEST_ENV) $(PY) -m pytest -n 2 --dist loadgroup -q --durations=15

test-slow: venv
	$(TEST_ENV) $(PY) -m pytest -n 2 --dist loadgroup -q -m slow

# The GPU path in one go (bench/gpu_check.py); on a machine without network run the script with its python3
gpu-check: venv
	$(PY) bench/gpu_check.py --device cuda --out runs/gpu-check

# The small wheels bench/gpu_check.py needs beyond a GPU image's usual packages, for a machine without network
gpu-check-wheels: venv
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
		$$($(PY) -c "import sys; sys.path.insert(0, 'bench'); import gpu_check; print(*gpu_check.WHEELS)")

clean:
	rm -rf $(VENV) .pytest_cache

# The README's dashboard screenshot: the newest demo run (make demo first), its best candidate's pictures open
DEMO_RUN ?= $(patsubst %/run.json,%,$(lastword $(sort $(wildcard runs/demo-2*/run.json))))
screenshot: venv
	test -n "$(DEMO_RUN)" || { echo "no runs/demo-*/: run make demo first"; exit 2; }
	$(PY) -m nas.dashboard $(DEMO_RUN) --port 8077 & pid=$$!; \
	for i in $$(seq 60); do $(PY) -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8077/')" 2>/dev/null \
		&& break; sleep 1; done; \
	chromium --headless --no-sandbox --disable-gpu --enable-unsafe-swiftshader --hide-scrollbars \
		--screenshot=docs/dashboard.png --window-size=1280,1500 --virtual-time-budget=20000 \
		"http://127.0.0.1:8077/?trial=best"; status=$$?; kill $$pid; exit $$status
