# syntax=docker/dockerfile:1
#
# octogate container image.
#
#   docker build -t octogate .
#   docker run --rm -p 8000:8000 octogate
#
# Two stages:
#   builder  compiles llama-cpp-python (no Linux wheel on PyPI) and collects a
#            wheel for octogate and every dependency into /wheels.
#   runtime  a slim image that installs only from /wheels (--no-index), with
#            no compiler, running as an unprivileged user.
#
# Checked by .ci/check-dockerfile (hadolint + consistency with the repo).

##############################################################################
# builder
##############################################################################
FROM python:3.11-slim-bookworm AS builder

# Base image tag pins the Debian release (bookworm); exact package versions
# are not pinned because Debian point releases remove superseded versions
# from the archive, which would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# llama.cpp defaults to -march=native, which would tie the image to the CPU
# of the build host. GGML_NATIVE=OFF builds for a fixed x86-64 baseline
# (SSE4.2/AVX/AVX2/FMA/F16C/BMI2, i.e. any x86-64 CPU since ~2013).
# Override with e.g. --build-arg CMAKE_ARGS="-DGGML_NATIVE=ON" for a
# host-tuned image. ARG values are visible to RUN as environment variables.
ARG CMAKE_ARGS="-DGGML_NATIVE=OFF"

WORKDIR /src

# 1) Dependencies only: this layer (and the ~8 min llama.cpp compile) is
#    rebuilt only when pyproject.toml changes, not on every source edit.
#    The list is the build requirements plus [project].dependencies.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(p['build-system']['requires'] + p['project']['dependencies']))" > /tmp/requirements.txt \
    && cat /tmp/requirements.txt \
    && CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" pip wheel --no-cache-dir --wheel-dir /wheels -r /tmp/requirements.txt

# 2) The project itself. --no-index: every dependency must already be in
#    /wheels from step 1, so nothing is downloaded or compiled again here.
COPY README.md ./
COPY core/ ./core/
COPY gateway/ ./gateway/
COPY adapters/ ./adapters/
COPY router_model/ ./router_model/
COPY agents/ ./agents/
RUN pip wheel --no-cache-dir --no-index --find-links /wheels --wheel-dir /wheels . \
    && ls -l /wheels

##############################################################################
# runtime
##############################################################################
FROM python:3.11-slim-bookworm AS runtime

# libgomp1: llama.cpp is built with OpenMP (libggml-base.so and libggml-cpu.so
# link libgomp.so.1). The other libraries they need (libstdc++6, libgcc-s1,
# libc6) are already in the slim base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True

# The wheels are bind-mounted from the builder rather than COPYed, so they
# do not add a layer (~210 MB) to the final image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels /wheels/octogate-*.whl \
    && python -c "import llama_cpp" \
    && octogate --help > /dev/null

# Unprivileged runtime user (fixed UID so volume permissions are predictable).
RUN groupadd --system --gid 10001 octogate \
    && useradd --system --no-log-init --uid 10001 --gid octogate \
        --create-home --home-dir /home/octogate --shell /usr/sbin/nologin octogate

# `octogate serve` reads config/default.yaml relative to the working directory
# (or $OCTOGATE_CONFIG); mount another file over it or pass --config to change it.
WORKDIR /app
COPY --chown=root:root config/ ./config/

# Numeric so that runtimes can verify it is non-root (e.g. runAsNonRoot).
USER 10001:10001

EXPOSE 8000

# No curl in the slim image: probe with the interpreter that is already there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

CMD ["octogate", "serve", "--host", "0.0.0.0", "--port", "8000"]
