# GPU image of the harness: CUDA 13 toolkit (nvcc, for FlashInfer's JIT and figure 7's benchmark),
# Python 3.12 and the pinned GPU install (requirements/gpu.txt).
#   docker build -t pod-attention-harness .
#   docker run --gpus all --rm -it -v "$PWD/results-new:/workspace/pod-harness/results-new" \
#       pod-attention-harness make figure11
FROM nvidia/cuda:13.0.0-devel-ubuntu24.04

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# make for the entry points; git so that provenance records the commit.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev make git \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /workspace/pod-harness
# Requirements first so that code edits do not reinstall them.
COPY requirements/ requirements/
RUN pip install -r requirements/gpu.txt
COPY . .
# Optional: FlashInfer's modules of every paper target compiled into the image for one GPU
# architecture (nvcc needs no GPU), e.g. --build-arg FLASHINFER_ARCH=9.0; empty: FlashInfer compiles
# them on first use, in the build step of a run.
ARG FLASHINFER_ARCH=""
RUN if [ -n "$FLASHINFER_ARCH" ]; then \
        make flashinfer-modules ARCH="$FLASHINFER_ARCH" \
        && python -m experiments.flashinfer_modules install "flashinfer-modules/sm$FLASHINFER_ARCH"; \
    fi

CMD ["make", "help"]
