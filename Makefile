# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PY) >/dev/null || { echo "need $(PY)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
	@# an older checkout installed opencv-python-headless; it and the contrib wheel share cv2/ and must not both be there
	if $(BIN)/pip show -q opencv-python-headless 2>/dev/null; then $(BIN)/pip uninstall -y -q opencv-python-headless opencv-contrib-python-headless; fi
	$(BIN)/pip install -q -c constraints.txt -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import refine_by_align, torch, diffusers, transformers, skimage, pytest, numba, cv2; cv2.xphoto"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/refine-by-align demo --output demo-output

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-output
