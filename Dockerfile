# The Grand Challenge container: `python inference.py` (/input -> /output) on a PyTorch CUDA 12 runtime base.
#   ./build.sh                      build and tag (see build.sh for BASE_IMAGE, --no-weights and --api)
# torch and torchvision come from the base image (the default: torch 2.7.1 for CUDA 12.6, cuDNN 9, Python 3.11;
# it ran on GC's T4s), with the CUDA and cuDNN libraries they bring; everything else is pinned in
# requirements-container.txt.
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime

# The app's files, readable by any user, bytecode compiled; weights/ emptied when WITH_WEIGHTS=0
# (weights then come from GC's model tarball at /opt/ml/model).
FROM ${BASE_IMAGE} AS app
ARG WITH_WEIGHTS=1
COPY inference.py /opt/app/inference.py
COPY src /opt/app/src
COPY ensemble /opt/app/ensemble
COPY weights /opt/app/weights
RUN if [ "$WITH_WEIGHTS" != 1 ]; then rm -rf /opt/app/weights && mkdir /opt/app/weights; fi \
 && python -m compileall -q --invalidation-mode unchecked-hash /opt/app/src \
 && chmod -R a+rX,go-w /opt/app

FROM ${BASE_IMAGE}
# GC may run the image as a uid without a (writable) home: caches that libraries create go to /tmp
ENV PYTHONUNBUFFERED=1 \
    PANTHER_APP_DIR=/opt/app \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache

# pip may not replace the base's torch or torchvision (a CUDA torch from PyPI is several GB) nor the CUDA
# libraries that came with them (nvidia-*, triton). Then ONNX Runtime's CUDA provider must load, without torch
# imported: its CUDA 12 and cuDNN 9 libraries (found as onnxruntime.preload_dlls finds them: the base's
# nvidia-*-cu12 packages, else the system's) must all be in the image. Loading them needs no GPU, so a missing
# library fails this build, not a job on GC. The build log names the image's Python, torch, CUDA, cuDNN and
# ONNX Runtime.
COPY requirements-container.txt docker/image_check.py /tmp/
RUN python -c "import importlib.metadata as m; print('\n'.join(f'{d}=={m.version(d)}' for d in ('torch', 'torchvision')))" \
        > /tmp/base-torch.txt \
    || { echo "BASE_IMAGE must provide torch and torchvision (a PyTorch runtime image)" >&2; exit 1; } \
 && echo "base image: Python $(python -c 'import platform; print(platform.python_version())'), $(tr '\n' ' ' < /tmp/base-torch.txt)" \
 && python -c "import importlib.metadata as m; print(*sorted({f'{d.name}=={d.version}' for d in m.distributions() if d.name.lower().startswith(('nvidia-', 'triton'))}), sep='\n')" \
        >> /tmp/base-torch.txt \
 && PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
    python -m pip install --no-cache-dir --progress-bar off -r /tmp/requirements-container.txt -c /tmp/base-torch.txt \
 && python /tmp/image_check.py onnxruntime \
 && python /tmp/image_check.py versions \
 && rm /tmp/requirements-container.txt /tmp/base-torch.txt /tmp/image_check.py

RUN groupadd --system user && useradd --system --gid user --no-log-init --create-home user
COPY --from=app /opt/app /opt/app
USER user
WORKDIR /opt/app
ENTRYPOINT ["python", "inference.py"]

# Grand Challenge's API method, read from this label when the image is uploaded: exec (GC runs the entrypoint once
# per task, which predicts and exits) or invoke (GC starts the entrypoint once, which serves /health and /invoke on
# 127.0.0.1:4743). The entrypoint follows the same value (PANTHER_API_METHOD); last, so both share every layer.
ARG API_METHOD=exec
RUN case "$API_METHOD" in exec|invoke) ;; *) echo "API_METHOD must be exec or invoke, got '$API_METHOD'" >&2; exit 1;; esac
LABEL org.grand-challenge.api-method="${API_METHOD}"
ENV PANTHER_API_METHOD="${API_METHOD}"
