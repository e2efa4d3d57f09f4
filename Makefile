# Two commands for a new user: `make demo` and `make test`. Both install what is missing first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
LIBTORCH := $(VENV)/libtorch
TORCH_VERSION := 2.13.0
BIN := target/debug/tripmine
DEMO_OUT := out/demo
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
export CARGO_TERM_COLOR ?= never

.PHONY: demo test libtorch build fixtures bench-embed bench-mine bench-train bench-audit clean-venv

# Idempotent: the symlink exists only once torch (libtorch) and the test helpers are installed.
$(LIBTORCH):
	python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --quiet torch==$(TORCH_VERSION) numpy safetensors
	ln -sfn "$$($(PY) -c 'import os, torch; print(os.path.relpath(os.path.dirname(torch.__file__), "$(VENV)"))')" $(LIBTORCH)

libtorch: $(LIBTORCH)

build: $(LIBTORCH)
	cargo build

fixtures: $(LIBTORCH)
	cargo run --example make_fixtures -- fixtures

demo: build
	@rm -rf $(DEMO_OUT)
	$(BIN) train --corpus fixtures/manifest.csv --out $(DEMO_OUT)/run --input-size 32 --dim 64 --epochs 4 \
		--lr 0.003 --negatives-per-anchor 2 --batch-size 16 --no-augment --seed 7
	$(BIN) eval --corpus fixtures/manifest.csv --model $(DEMO_OUT)/run/best --split test
	$(BIN) embed --corpus fixtures/corpus --model $(DEMO_OUT)/run/best --out $(DEMO_OUT)/embeddings
	$(BIN) mine --embeddings $(DEMO_OUT)/embeddings --out $(DEMO_OUT)/triplets.csv --strategy semihard=0.7,hard=0.3
	$(BIN) view $(DEMO_OUT)/triplets.csv --corpus fixtures/corpus --out $(DEMO_OUT)/sheets --limit 100
	$(BIN) audit --corpus fixtures/planted.csv --model $(DEMO_OUT)/run/best --out $(DEMO_OUT)/audit
	@echo
	@echo "embeddings:        $(DEMO_OUT)/embeddings/embeddings.npy (+ samples.csv, embeddings.json, skipped.csv)"
	@echo "triplets:          $(DEMO_OUT)/triplets.csv (+ triplets.json)"
	@echo "training run:      $(DEMO_OUT)/run (metrics.csv, best/, last/, config.json)"
	@echo "round triplets:    $(DEMO_OUT)/run/rounds/000/triplets.csv ... (one per global mining round)"
	@echo "audit:             $(DEMO_OUT)/audit (duplicates.csv, label_issues.csv, outliers.csv, leakage.csv, classes.csv, dedupe.csv, exclude.csv, audit.json)"
	@echo
	@echo "Open in a browser:"
	@echo "triplet sheets:    $(DEMO_OUT)/sheets/index.html"
	@echo "training report:   $(DEMO_OUT)/run/report.html"
	@echo "audit report:      $(DEMO_OUT)/audit/report.html"

# BROWSER=1 also installs Debian's chromium (when missing) and runs the headless-browser check.
test: $(LIBTORCH) $(if $(BROWSER),$(CHROMIUM))
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	$(if $(BROWSER),TRIPMINE_CHROMIUM=$(CHROMIUM)) cargo test

$(CHROMIUM):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium || \
		($(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium)

bench-embed: $(LIBTORCH)
	cargo run --release --example bench_embed

bench-audit: $(LIBTORCH)
	cargo run --release --example bench_audit

bench-mine: $(LIBTORCH)
	cargo run --release --example bench_mine -- $(BENCH_MINE_ARGS)

# Fashion-MNIST (Debian's dataset-fashion-mnist, installed by the script): 1,000 training and
# 200 test images per class; global mining vs batch-hard for the same epochs.
bench-train: $(LIBTORCH)
	cargo build --release
	python3 scripts/fashion_mnist.py out/fashion-mnist --per-class 1000
	python3 scripts/bench_train.py target/release/tripmine out/fashion-mnist out/bench-train $(or $(EPOCHS),5)

clean-venv:
	rm -rf $(VENV)
