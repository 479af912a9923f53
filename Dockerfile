# syntax=docker/dockerfile:1
#
# awqd: Python 3.11 on the CUDA 12.4 userspace, with the one pinned set in which AutoAWQ's CUDA kernels load.
#
# Why this set: autoawq-kernels 0.0.9, the last release, ships awq_ext and awq_v2_ext compiled against torch 2.5.1 and
# CUDA 12.4 (they link libc10, libtorch_cpu, libtorch_python, libc10_cuda and libcudart.so.12). Its wheel metadata only
# says torch>=2.5.1, but any other torch breaks the C++ ABI ("undefined symbol" on import), so torch is pinned to
# 2.5.1+cu124 and triton to 3.1.0, the version that torch pins. autoawq 0.2.9 is AutoAWQ's last release;
# transformers 4.51.3 is the last version it was tested with, and tokenizers 0.21 and huggingface_hub < 1 are what
# that transformers accepts. The kernels carry code for sm_75 to sm_90 only (no PTX), so in this image they serve
# Turing to Hopper; on other GPUs awqd's capability rules pick its other kernels.
# Peer kernels in this image: torch's int4 matmul (tinygemm) comes with torch; fbgemm-gpu-genai 1.0.0 is the release
# built against torch 2.5 (CUDA 12), and it has bf16i4bf16_rowwise but not bf16i4bf16_shuffled (added in 1.2.0, for
# torch 2.7), so on Hopper Describe shows the shuffled kernel unsupported with that reason. gemlite is left out: it
# needs triton >= 3.6, and this torch pins triton 3.1.0. torch's CPU int4 kernel came in torch 2.6, so here too the
# host CPU keeps its other candidates.

# The CUDA "base" flavour, not "runtime" or "cudnn-runtime": torch's wheels bring the CUDA 12.4 libraries and cuDNN
# themselves; the base image adds cudart and the NVIDIA_* settings the container toolkit reads to mount the driver.
ARG CUDA_BASE=nvidia/cuda:12.4.1-base-ubuntu22.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.5.11

FROM ${UV_IMAGE} AS uv

FROM ${CUDA_BASE} AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Ubuntu 22.04 has no Python 3.11 package: uv installs a standalone build, and the pinned uv fixes its patch version.
# torch comes from PyTorch's CUDA 12.4 index with its CUDA libraries as wheels, so the runtime needs no CUDA toolkit.
# The third-party set is one layer of its own, so that editing awqd does not reinstall it.
RUN uv python install 3.11 \
    && uv venv --python 3.11 /opt/venv \
    && printf '%s\n' torch==2.5.1 triton==3.1.0 autoawq-kernels==0.0.9 autoawq==0.2.9 transformers==4.51.3 \
        'tokenizers>=0.21,<0.22' 'huggingface_hub<1' fbgemm-gpu-genai==1.0.0 > /opt/constraints.txt \
    && uv pip install --index-url https://download.pytorch.org/whl/cu124 torch==2.5.1+cu124 \
    && uv pip install --constraint /opt/constraints.txt autoawq-kernels==0.0.9 autoawq==0.2.9 transformers==4.51.3 \
        fbgemm-gpu-genai==1.0.0

WORKDIR /src
COPY clients/python clients/python
COPY pyproject.toml README.md ./
COPY awqd awqd
# The import check fails the build, not the first request, if the kernels do not load against this torch (no GPU needed).
RUN uv pip install --constraint /opt/constraints.txt ./clients/python . \
    && python -c "import torch, awq_ext, awq_v2_ext; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    && python -c "import torch, fbgemm_gpu.experimental.gen_ai; torch.ops.fbgemm.bf16i4bf16_rowwise" \
    && awqd --help > /dev/null && awqctl --help > /dev/null

FROM ${CUDA_BASE} AS runtime

# Triton (AutoAWQ's Triton GEMM, awqd's Triton kernels) compiles its small C launcher with the system C compiler when
# a kernel first runs, so gcc and the libc headers are the one piece of build tooling the runtime keeps.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv

RUN useradd --uid 10001 --user-group --create-home --home-dir /home/awqd --shell /usr/sbin/nologin awqd \
    && mkdir -p /var/cache/awqd \
    && chown awqd:awqd /var/cache/awqd

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    AWQD_CACHE_DIR=/var/cache/awqd \
    TRITON_CACHE_DIR=/var/cache/awqd/triton \
    CUDA_CACHE_PATH=/var/cache/awqd/cuda \
    HF_HOME=/var/cache/awqd/huggingface

LABEL org.opencontainers.image.title="awqd" \
      org.opencontainers.image.description="Per-node daemon that serves 4-bit AWQ models over gRPC and picks AWQ kernels per GPU" \
      org.opencontainers.image.licenses="Apache-2.0"

USER 10001:10001
WORKDIR /home/awqd
VOLUME /var/cache/awqd
EXPOSE 50051 9400

# Health reports NOT_SERVING while models load; the start period keeps a long first load from counting as a failure.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["awqctl", "--target", "127.0.0.1:50051", "health"]

ENTRYPOINT ["awqd", "serve"]
