# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv themselves.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO   := demo-out

.PHONY: demo test install clean

install: $(STAMP)

# torch first, pinned: the CPU build of 2.13.0; anything else would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

test: $(STAMP)
	$(VENV)/bin/pytest -q

demo: $(STAMP)
	$(VENV)/bin/rnnquant zoo
	$(VENV)/bin/rnnquant ppl mamba-pydoc
	$(VENV)/bin/rnnquant generate mamba-pydoc --prompt "The list data type has some more methods." --max-new-tokens 48

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
