# lungnet on a CUDA runtime image: train, evaluate, predict and serve on NVIDIA GPUs.
#   docker build -t lungnet .
#   docker run --gpus all --rm -v /data:/data -v "$PWD/outputs:/work/outputs" lungnet \
#       lungnet-train trainer=gpu data=pneumonia data.root=/data/chest_xray
# The CUDA version of the base image matches the PyTorch wheels installed below (cu130); the host needs an NVIDIA
# driver that supports it and the NVIDIA Container Toolkit (--gpus all).
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/lungnet \
    PATH=/opt/lungnet/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# the distribution's current python3 (security updates), not a pinned build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY conf ./conf
COPY lungnet ./lungnet
# torch and torchvision (the versions CI tests, .ci/run) from PyTorch's CUDA index first, then lungnet: a regular,
# non-editable install (the configs travel inside the package as lungnet.conf); the source copy then goes
RUN pip install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" --index-url "$TORCH_INDEX" \
    && pip install . \
    && rm -rf /src

WORKDIR /work
# smoke check: the installed console script finds its packaged configs from outside the source tree
RUN lungnet-train --help > /dev/null && lungnet-predict --help > /dev/null
CMD ["lungnet-train", "--help"]
