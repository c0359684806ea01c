# Two entry points for a fresh machine with Python 3.11:
#   make demo   set up .venv, then export a generated project on a local SeaweedFS
#   make serve-demo   a local SeaweedFS with that project, kept running (Ctrl-C stops it)
#   make test   set up .venv, then run the test suite (it starts its own servers)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.installed

.PHONY: demo serve-demo test lint docs bench setup clean check-datasets check-datasets-venv check-rtstruct check-rtstruct-venv

setup: $(READY)

$(READY): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit("rbexport needs Python 3.11 or newer" if sys.version_info < (3, 11) else 0)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,dask,lint,docs]"
	touch $(READY)

demo: $(READY)
	$(BIN)/rbexport demo --output demo-output

# SeaweedFS with the sample project until Ctrl-C; prints the variables for the README's deployment steps.
serve-demo: $(READY)
	$(BIN)/rbexport demo --keep

# Two workers, a test file each at a time, the longest files first (tests/conftest.py): most
# tests wait on servers, so this halves the time (three workers measured slower on two cores).
# --durations: the slowest tests, in the log, for the next one who trims the suite.
test: $(READY)
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=25

# ruff (F, I, B, UP), ruff's formatter, mypy and codespell, as configured in pyproject.toml;
# CI runs it first. .pre-commit-config.yaml runs the same tools before each commit.
lint: $(READY)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/codespell

# The docs site (docs/, mkdocs.yml) into build/site; its reference pages are generated from
# the code (docs/hooks.py, mkdocstrings). Strict: a broken link or a stale reference fails.
docs: $(READY)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) demo-output .pytest_cache

bench: $(READY)
	$(BIN)/python -m benchmarks

# Optional: check nnU-Net v2 / MSD training datasets with the real readers
# (nnunetv2, monai) in a venv of their own, never in .venv.
#   make check-datasets    exports generated projects in both layouts with `rbexport run`
#                          and runs nnU-Net's verify_dataset_integrity and MONAI on them
#   .venv-datasets/bin/python tests/real_clients/check_datasets.py --nnunet DIR --msd DIR
# torch is installed first, pinned to the CPU wheel that lies on this machine's disk
# (2.13.0; 2.14.1 if that is refused), then pinned again beside nnunetv2/monai so the
# resolver cannot swap it for a newer (multi-GB CUDA) build.
PYTHON311 ?= python3.11
DATASETS_VENV := .venv-datasets
DATASETS_TORCH ?= 2.13.0


check-datasets: $(READY) check-datasets-venv
	$(BIN)/python tests/real_clients/make_datasets.py build/check-datasets
	$(DATASETS_VENV)/bin/python tests/real_clients/check_datasets.py \
	    --nnunet build/check-datasets/nnUNet_raw/Dataset501_Brain \
	    --nnunet build/check-datasets/nnUNet_raw/Dataset502_CT \
	    --msd build/check-datasets/Task01_Brain \
	    --nnunet build/check-datasets/releases/nnUNet_raw/Dataset501_Brain
	cd build/check-datasets && nnUNet_raw=$$PWD/nnUNet_raw nnUNet_preprocessed=$$PWD/nnUNet_preprocessed \
	    nnUNet_results=$$PWD/nnUNet_results $(CURDIR)/$(DATASETS_VENV)/bin/nnUNetv2_plan_and_preprocess \
	    -d 501 -c 3d_fullres -np 1 --verify_dataset_integrity
	cmp build/check-datasets/nnUNet_raw/Dataset501_Brain/splits_final.json \
	    build/check-datasets/nnUNet_preprocessed/Dataset501_Brain/splits_final.json
	@echo "check-datasets: nnU-Net planned and preprocessed Dataset501 on rbexport's folds"

check-datasets-venv: $(DATASETS_VENV)/.installed

$(DATASETS_VENV)/.installed:
	@set -e; start=$$(date +%s); \
	test -x $(DATASETS_VENV)/bin/python || $(PYTHON311) -m venv $(DATASETS_VENV); \
	pip="$(DATASETS_VENV)/bin/python -m pip --quiet"; \
	$$pip install --upgrade pip; \
	$$pip install torch==$(DATASETS_TORCH) || $$pip install torch==2.14.1; \
	tv=$$($(DATASETS_VENV)/bin/python -c 'from importlib.metadata import version; print(version("torch").split("+")[0])'); \
	$$pip install "torch==$$tv" nnunetv2 monai nibabel; \
	$(DATASETS_VENV)/bin/python -c 'import torch, nnunetv2, monai, nibabel; from importlib.metadata import version as v; print("torch", torch.__version__, "nnunetv2", v("nnunetv2"), "monai", monai.__version__, "nibabel", nibabel.__version__)'; \
	touch $@; \
	echo "$(DATASETS_VENV) installed in $$(( $$(date +%s) - start )) s"

# Optional: read rbexport's RT Structure Sets with dcmrtstruct2nii (it needs pydicom 2, so
# it lives in a venv of its own, .venv-rtstruct) and validate them with dicom3tools'
# dciodvfy when it is installed (apt-get install dicom3tools).
#   make check-rtstruct    exports generated cases with `rbexport run --mask-format rtstruct`
#                          (and NIfTI beside), then compares dcmrtstruct2nii's masks with the
#                          NIfTI instance files voxel for voxel, and runs dciodvfy on every file
RTSTRUCT_VENV := .venv-rtstruct

check-rtstruct: $(READY) check-rtstruct-venv
	$(BIN)/python tests/real_clients/make_rtstruct.py build/check-rtstruct
	$(RTSTRUCT_VENV)/bin/python tests/real_clients/check_rtstruct.py build/check-rtstruct/manifest.json

check-rtstruct-venv: $(RTSTRUCT_VENV)/.installed

$(RTSTRUCT_VENV)/.installed:
	test -x $(RTSTRUCT_VENV)/bin/python || $(PYTHON311) -m venv $(RTSTRUCT_VENV)
	$(RTSTRUCT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(RTSTRUCT_VENV)/bin/python -m pip install --quiet dcmrtstruct2nii "pydicom<3"
	touch $@
