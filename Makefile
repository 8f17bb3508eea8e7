# `make demo` and `make test` each work on a fresh machine: they create .venv if missing and install what is needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned here, not in pyproject.toml: users bring the build that matches their CUDA.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test bench model clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	@# the web page test drives Debian's headless chromium (apt); without root it is skipped, and says so
	command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get install -y -q chromium chromium-driver >/dev/null; } \
		|| echo "note: chromium + chromium-driver are not installed: tests/test_serve.py skips the page test"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/emoadapt demo

test: install
	$(PY) -m pytest -q -n auto --dist loadfile

model: install  # the model shipped in src/emoadapt/modelfolder/shipped_models/default (RAVDESS + EMOVO + ASED with augmentation, chosen by leave-one-corpus-out; about an hour on 2 cores)
	$(PY) tools/build_shipped_model.py

bench: install
	$(PY) bench/extract.py

clean:
	rm -rf $(VENV) runs stores
