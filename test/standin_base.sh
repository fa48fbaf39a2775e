#!/usr/bin/env bash
# A stand-in for the PyTorch CUDA base image (pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime), for build hosts
# that cannot pull it (offline, no Docker Hub): Debian bookworm from debootstrap with the same Python minor (3.11)
# and the same torch release, as the CUDA 12.6 build with its NVIDIA runtime libraries from PyPI (nvidia-*-cu12:
# cuDNN 9, cuBLAS, cuFFT, ...), the way the real image carries them (pip-installed, site-packages/nvidia/*/lib,
# no system CUDA). Without a GPU it runs the product on the CPU, but the image's CUDA libraries are all there:
# the Dockerfile's check that ONNX Runtime's CUDA provider loads runs against them.
#
#   test/standin_base.sh [TAG]    (default TAG: panther-ensemble-standin-base:bookworm-py3.11-torch2.7.1-cu126)
#
# The Python environment is a plain venv (no conda) at /opt/conda, so that its paths are the real image's:
# `python` is /opt/conda/bin/python, the packages are in /opt/conda/lib/python3.11/site-packages. PATH,
# LD_LIBRARY_PATH, NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES, PYTORCH_VERSION and the working directory
# /workspace are the real image's too. Every package is pinned below or pinned exactly by torch itself
# (nvidia-*-cu12, triton), so the stand-in is the same on every build.
#
# Needs root (debootstrap, chroot), a Docker engine, the Debian and PyPI registries, and disk: the image is
# 5.7 GB (torch and its NVIDIA libraries), built in a folder under /var/tmp that is removed once Docker has
# imported it. pip runs inside the chroot and reaches PyPI with this host's resolv.conf. The stand-in trusts
# the CA certificates this host adds in /usr/local/share/ca-certificates (a TLS-inspecting proxy's, say), so
# that pip inside `docker build` reaches PyPI the way this host does.
case "${1:-}" in -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;; esac
set -euo pipefail

TAG="${1:-panther-ensemble-standin-base:bookworm-py3.11-torch2.7.1-cu126}"
TORCH="2.7.1"         # PyPI's torch 2.7.1 for Linux x86_64 is the CUDA 12.6 build (pytorch.org's cu126 wheel)
TORCHVISION="0.22.1"  # the release paired with torch 2.7.1, as in the real image
PREFIX=/opt/conda     # a venv where the real image has its conda environment
# torch's and torchvision's dependencies that their metadata leaves open, pinned to the dev venv's versions
# (the container's lock, requirements-container.txt, where it lists them); torch pins nvidia-*-cu12 and triton
# exactly itself
DEPS=(filelock==4.3.1 typing-extensions==4.16.0 setuptools==84.2.1 sympy==1.14.0 mpmath==1.3.0 networkx==3.6.1
      jinja2==3.1.6 markupsafe==3.0.4 fsspec==2026.9.0 numpy==2.4.6 pillow==13.0.0)
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [[ $EUID -ne 0 ]]; then
    echo "standin_base.sh: must run as root (debootstrap and chroot)" >&2
    exit 1
fi
for tool in debootstrap docker; do
    command -v "$tool" >/dev/null || { echo "standin_base.sh: '$tool' is not installed" >&2; exit 1; }
done

work="$(mktemp -d /var/tmp/panther-standin.XXXXXX)"
root="$work/rootfs"
cleanup() {
    for fs in proc sys dev/pts; do  # debootstrap's own mounts too, should it stop halfway
        if mountpoint -q "$root/$fs"; then umount -l "$root/$fs"; fi
    done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
in_root() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$root" "$@"; }  # no host env

start=$SECONDS
echo "== debootstrap bookworm (minbase, python3) from $MIRROR"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$MIRROR" \
    > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }

if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    in_root update-ca-certificates >/dev/null 2>&1
fi
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/hosts "$root/etc/hosts"

echo "== venv $PREFIX: torch $TORCH and torchvision $TORCHVISION from PyPI, with their nvidia-*-cu12 libraries"
mount -t proc proc "$root/proc"
in_root python3 -m venv "$PREFIX"
in_root "$PREFIX/bin/pip" install -q --no-cache-dir --disable-pip-version-check --progress-bar off \
    "torch==$TORCH" "torchvision==$TORCHVISION" "${DEPS[@]}"
in_root "$PREFIX/bin/pip" check --disable-pip-version-check >/dev/null
# what pip installed (the stand-in's whole environment) and what torch sees; no GPU needed for either
echo "   $(in_root "$PREFIX/bin/pip" freeze --all --disable-pip-version-check | tr '\n' ' ')"
in_root "$PREFIX/bin/python" -W ignore -c "import platform, torch, torchvision
c = torch.backends.cudnn.version()
print('   Python', platform.python_version(), '| torch', torch.__version__, '| CUDA', torch.version.cuda,
      f'| cuDNN {c // 10000}.{c // 100 % 100}.{c % 100} | torchvision', torchvision.__version__)"
umount "$root/proc"
mkdir -p "$root/workspace"

rm -rf "$root"/root/.cache "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/info
: > "$root/etc/resolv.conf"
: > "$root/etc/hosts"

echo "== docker import $TAG"
tar --numeric-owner --exclude='./dev/*' -C "$root" -c . | docker import \
    --platform linux/amd64 \
    --change "ENV PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:$PREFIX/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change 'ENV NVIDIA_VISIBLE_DEVICES=all' \
    --change 'ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility' \
    --change 'ENV LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64' \
    --change "ENV PYTORCH_VERSION=$TORCH" \
    --change 'WORKDIR /workspace' \
    --change 'CMD ["/bin/bash"]' \
    --message "stand-in base: Debian bookworm, Python 3.11, torch $TORCH (CUDA 12.6 build, nvidia-*-cu12 from PyPI)" \
    - "$TAG" >/dev/null
echo "stand-in base $TAG built in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$TAG" \
    | awk '{printf "%.2f GB", $1 / 1e9}'))"
