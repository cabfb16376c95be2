# The platform in one image: the API (the default command), every pipeline stage (`recsys ...`),
# and the Ray head and workers of infra/compose.yaml and infra/k8s/. Ray runs the project's own
# code (the embedding and training functions are imported on the workers), so the workers must
# be this image, with the same Ray and Python as the driver, not a stock rayproject/ray image.
#
#   docker build -t recsys-fashion:0.1.0 .            # from the repository root
#
# infra/README.md goes from here to compose and to Kubernetes.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FEAST_USAGE=False \
    RAY_USAGE_STATS_ENABLED=0 \
    HF_HUB_OFFLINE=1

# LightGBM's wheel links the system OpenMP runtime (libgomp), which the slim image lacks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# torch first, pinned, from PyTorch's CPU index (inside the image this is the index to use; the
# Makefile's venv gets the same CPU build its own way): PyPI's Linux torch wheel pulls several GB
# of CUDA libraries. pyproject pins the same version, so `pip install .` below keeps this build.
# Its own layer: it changes far less often than the code.
RUN pip install 'torch==2.13.0' --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
# The packages (pyproject's [tool.setuptools] list), README.md (pyproject's readme) and the Feast
# repo. feature_repo/ is not a Python package, so `pip install .` leaves it out; it stays here
# and RECSYS_FEATURE_REPO points at it (settings default to a folder beside the installed code).
COPY pyproject.toml README.md ./
COPY recsys ./recsys
COPY pipelines ./pipelines
COPY models ./models
COPY serving ./serving
COPY feature_repo ./feature_repo
# The sources go once installed: one copy of the code (site-packages) for the API, the stages and
# the Ray workers alike.
RUN pip install . && rm -rf build ./*.egg-info recsys pipelines models serving

# Not root: the API faces the network. /data is the data root (RECSYS_HOME) that every stage
# writes under; compose mounts a named volume there (which takes this folder's owner), Kubernetes
# the shared PVC (fsGroup 10001 in infra/k8s makes it writable).
RUN groupadd --gid 10001 recsys \
    && useradd --uid 10001 --gid recsys --create-home --shell /usr/sbin/nologin recsys \
    && mkdir /data && chown recsys:recsys /data
ENV RECSYS_HOME=/data \
    RECSYS_FEATURE_REPO=/app/feature_repo
VOLUME ["/data"]
USER 10001:10001

EXPOSE 8000
# `recsys serve` refuses a non-loopback host without API keys (RECSYS_SERVE__API_KEYS, from
# `recsys api-key NAME`), or RECSYS_SERVE__ALLOW_OPEN_WRITES=true on a guarded network.
CMD ["recsys", "serve", "--host", "0.0.0.0", "--port", "8000"]
