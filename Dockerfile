# GPU image of the harness: CUDA + PyTorch, the project's requirements and FlashInfer.
#   docker build -t pod-attention-harness .
#   docker run --gpus all --rm -it -v "$PWD/results:/workspace/pod-harness/results" \
#       pod-attention-harness make figure11
FROM pytorch/pytorch:2.7.1-cuda12.8-cudnn9-devel

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
# make for the entry points; git so that provenance records the commit.
RUN apt-get update && apt-get install -y --no-install-recommends make git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/pod-harness
# Requirements first so that code edits do not reinstall them. The base image's torch satisfies
# torch>=2.4 and is kept. flash-attn (optional, a long compile) is left out: see requirements-gpu.txt.
COPY requirements.txt requirements-gpu.txt ./
RUN pip install -r requirements.txt -r requirements-gpu.txt
COPY . .

CMD ["make", "help"]
