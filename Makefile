# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv themselves.
VENV   := .venv
PY     := $(VENV)/bin/python
RQ     := $(VENV)/bin/rnnquant
STAMP  := $(VENV)/.installed-stamp
OUT    := demo-out
MODEL  := mamba-pydoc
PROMPT := "The list data type has some more methods."

WEB    := web/node_modules/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test fuzz install web-deps chromium clean

install: $(STAMP)

# torch first, pinned: the CPU build of 2.13.0; anything else would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

# the web tests' packages, from the lockfile (--ignore-scripts: onnxruntime-node's install script
# downloads CUDA binaries; its CPU binary is in the package) and Debian's chromium for the page test
web-deps: $(WEB) chromium

$(WEB): web/package.json web/package-lock.json
	cd web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

chromium:
	@command -v chromium >/dev/null || { export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -q chromium || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }; }

test: $(STAMP) web-deps
	$(VENV)/bin/pytest -q

# longer fuzzing of every parser (CI runs 40 examples per target inside `make test`)
fuzz: $(STAMP)
	RNNQUANT_FUZZ_EXAMPLES=3000 $(VENV)/bin/pytest -q tests/reliability/test_fuzz.py

# calibrate -> export (float, outlier-aware W8A8, W4A16 GPTQ) -> run -> compare, on the default zoo model
demo: $(STAMP)
	$(RQ) zoo
	$(RQ) calibrate $(MODEL) --samples 64 --out $(OUT)/calib --force
	$(RQ) export $(MODEL) --out $(OUT)/$(MODEL)-fp32.onnx --force
	$(RQ) export $(MODEL) --calib $(OUT)/calib --recipe w8a8-outlier --out $(OUT)/$(MODEL)-w8a8-outlier.onnx --force
	$(RQ) export $(MODEL) --recipe w4a16-gptq --out $(OUT)/$(MODEL)-w4a16-gptq.onnx --force
	$(RQ) run $(OUT)/$(MODEL)-w8a8-outlier.onnx --prompt $(PROMPT) --max-new-tokens 48 --threads 2
	$(RQ) compare --float $(MODEL) $(OUT)/$(MODEL)-fp32.onnx $(OUT)/$(MODEL)-w8a8-outlier.onnx $(OUT)/$(MODEL)-w4a16-gptq.onnx --threads 2 --out $(OUT)/report

clean:
	rm -rf $(VENV) $(OUT) build *.egg-info web/node_modules
