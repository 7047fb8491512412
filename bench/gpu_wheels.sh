#!/usr/bin/env bash
# Wheels for bench/gpu_check.sh on a GPU machine without network: Python 3.12, x86_64 Linux, with torch,
# torchvision, matplotlib, tqdm and OpenCV already there. Run it where pip reaches the index:
#
#   bash bench/gpu_wheels.sh [DIR]      # default .whl (git-ignore it: echo /.whl/ >> .git/info/exclude)
set -eu
DIR=${1:-.whl}
# what requirements.txt adds to such a machine (it has scipy, scikit-learn, OpenCV, PyYAML, typing-extensions),
# and what those need that it lacks: one version of each, the versions the tests run with
COMPILED="pydantic-core==2.46.4 simsimd==6.5.16 stringzilla==5.3.2"
PURE="albumentations==2.0.8 albucore==0.0.24 pydantic==2.13.4 annotated-types==0.7.0 typing-inspection==0.4.2
  torch-lr-finder==0.2.2 grad-cam==1.5.7 ttach==0.0.3 torchinfo==1.8.0"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DIR" $COMPILED
python3 -m pip wheel -q --no-deps -w "$DIR" $PURE  # pure Python (grad-cam ships only a source archive)
ls "$DIR"
