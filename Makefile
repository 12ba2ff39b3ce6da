# make demo   install the CPU stack, then run every stage offline on a tiny model (about 2 minutes)
# make test   install test dependencies, then run the whole test suite (what CI runs)
# make gpu    install the CUDA stack (adds Unsloth) on a GPU machine
# make notebooks  run the three workshop notebooks top to bottom (offline demo project by default)
PYTHON ?= python3
PIP = $(PYTHON) -m pip
# torch first: an unpinned torch pulled in by another package would bring gigabytes of CUDA wheels.
# On a laptop without a local CPU wheel, add: TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
DEMO_DIR ?= build/demo

.PHONY: install demo test test-fast browser gpu notebooks clean

install:
	$(PIP) install -q $(TORCH_INDEX) "$(TORCH)"
	$(PIP) install -q -r requirements.txt

demo: install
	$(PYTHON) -m mcgrpo.cli demo --dir $(DEMO_DIR)

test: install browser
	$(PIP) install -q -r requirements-test.txt
	$(PYTHON) -m pytest -n 2 --dist loadfile   # two workers, one file each at a time (module fixtures stay shared)

# The chat page's end-to-end test drives Debian's Chromium through Playwright (Playwright's own browser
# download needs the internet). Installed with apt when missing; elsewhere point CHROMIUM at a Chromium.
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "warning: no /usr/bin/chromium (apt-get install chromium); the browser test will be skipped"

test-fast: install
	$(PYTHON) -m pytest -m "not slow"

gpu:
	$(PIP) install -r requirements-gpu.txt

# In order: 02 trains on what 01 prepared, 03 compares with 02's adapter (notebooks/demo-project by default).
notebooks: install
	$(PIP) install -q -r requirements-test.txt
	cd notebooks && for nb in 01_dataset_evaluation 02_fine_tuning_grpo 03_comparison_evaluation; do \
	  $(PYTHON) -c "from nbclient.cli import main; main()" $$nb.ipynb || exit 1; done

clean:
	rm -rf build .pytest_cache
