# The README's commands. Every target that needs Python creates .venv first.
PY := .venv/bin/python
# torch is pinned first: where a CPU wheel of it lies on disk pip takes that one (see README, Quick start);
# override with `make TORCH_SPEC=torch==X.Y venv` for another build.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= handler,tools,cdk,dev

.PHONY: all venv test test-all lint typecheck demo synth checkov bench clean

all: lint test

venv: .venv/.stamp

.venv/.stamp: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# The LMI image-table test reads the JSON bundled in sagemaker-core; its own dependencies
	# (pandas, scipy, ...) are not needed for that, so skip them.
	$(PY) -m pip install -q --no-deps "sagemaker-core==2.27.0"
	touch $@

test: venv
	$(PY) -m pytest -q

test-all: venv
	$(PY) -m pytest -q -m "not gpu"

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy handler model_package scripts cdk

typecheck: lint

demo: venv
	$(PY) scripts/demo.py

bench: venv
	$(PY) scripts/bench.py

clean:
	rm -rf .venv cdk.out .pytest_cache .mypy_cache .ruff_cache

# Synthesize the CDK app offline (no AWS credentials): cdk.out/LoraEndpoint.template.json, checked by cdk-nag.
# Context keys: see README "Deploy to AWS"; pass them with `npx cdk synth -c key=value`.
synth: venv
	CDK_OUTDIR=cdk.out $(PY) -m cdk.app

# checkov on the synthesized template, from a venv of its own (checkov is not a project dependency).
CHECKOV_VENV ?= build/checkov-venv
checkov: synth
	test -x $(CHECKOV_VENV)/bin/checkov || (python3 -m venv $(CHECKOV_VENV) && \
		$(CHECKOV_VENV)/bin/pip install -q "checkov==3.3.30")
	$(CHECKOV_VENV)/bin/checkov -f cdk.out/LoraEndpoint.template.json --framework cloudformation \
		--compact --quiet --skip-download
