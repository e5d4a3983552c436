# Two commands for a fresh machine (see README):  make demo   |   make test
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/python -m pip
EXTRAS := edge,export,teacher,yolo,clips,eval,fleet,dev
# torchvision pins its torch: this pair is tested here (and lies on the CI disk,
# so the install downloads no CUDA build of several GB); override it elsewhere.
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[$(EXTRAS)]' $(TORCH_PAIR)
	# Real demo clip vtest.avi (apt, Debian's opencv-doc); bikes.mp4 (clips extra) is the fallback.
	$(VENV)/bin/python -m sdk.clips fetch --best-effort
	$(VENV)/bin/jitnet doctor
	touch $@

demo: install
	$(VENV)/bin/jitnet demo

test: install
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) .cache
