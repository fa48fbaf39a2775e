#!/usr/bin/env bash
# A stand-in for the PyTorch CUDA base image, for build hosts that cannot pull it (offline, no Docker Hub):
# Debian bookworm (Python 3.11) from debootstrap, a venv at /opt/venv that is the image's `python`, the CPU
# torch wheel and torchvision, imported as a Docker image. It runs the product on the CPU only.
#
#   test/standin_base.sh [TAG]        (default TAG: panther-ensemble-standin-base:bookworm-torch2.13.0-cpu)
#
# Needs root (debootstrap, chroot), a Docker engine, and the Debian and PyPI registries. The CPU torch wheel
# comes from `pip download` on this host (a local wheel folder in pip's find-links is enough; elsewhere set
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu), or from TORCH_WHEEL=/path/to/wheel.
# The stand-in trusts the CA certificates this host adds in /usr/local/share/ca-certificates (a TLS-inspecting
# proxy's, say), so that pip inside `docker build` reaches PyPI the way this host does.
set -euo pipefail

TAG="${1:-panther-ensemble-standin-base:bookworm-torch2.13.0-cpu}"
TORCH="2.13.0+cpu"
TORCHVISION="0.28.0"  # the release paired with torch 2.13; installed for nnunetv2's dependency chain only
# torch's own dependencies, pinned to the dev venv's versions
TORCH_DEPS=(filelock==4.3.1 typing-extensions==4.16.0 setuptools==84.2.1 sympy==1.14.0 mpmath==1.3.0
            networkx==3.6.1 jinja2==3.1.6 markupsafe==3.0.4 fsspec==2026.9.0)
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
if [[ -n "${TORCH_WHEEL:-}" ]]; then
    cp "$TORCH_WHEEL" "$work/"
else
    echo "== torch $TORCH wheel (pip download)"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
        --platform manylinux_2_28_x86_64 "torch==$TORCH" -d "$work"
fi
wheel="$(find "$work" -maxdepth 1 -name 'torch-*.whl' -printf '%f\n')"
[[ -n "$wheel" ]] || { echo "standin_base.sh: no torch wheel found" >&2; exit 1; }

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
mv "$work/$wheel" "$root/tmp/"

echo "== venv /opt/venv: torch $TORCH (local wheel), torchvision $TORCHVISION (PyPI, no deps)"
mount -t proc proc "$root/proc"
in_root python3 -m venv /opt/venv
in_root /opt/venv/bin/pip install -q --no-cache-dir --disable-pip-version-check \
    "/tmp/$wheel" "${TORCH_DEPS[@]}"
in_root /opt/venv/bin/pip install -q --no-cache-dir --disable-pip-version-check --no-deps \
    "torchvision==$TORCHVISION"
in_root /opt/venv/bin/python -W ignore -c "import torch; print('   torch', torch.__version__, 'imports')"
umount "$root/proc"

rm -rf "$root/tmp/$wheel" "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/info
: > "$root/etc/resolv.conf"
: > "$root/etc/hosts"

echo "== docker import $TAG"
tar --numeric-owner --exclude='./dev/*' -C "$root" -c . | docker import \
    --platform linux/amd64 \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "stand-in base: Debian bookworm, Python 3.11, torch $TORCH (CPU)" - "$TAG" >/dev/null
echo "stand-in base $TAG built in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$TAG" \
    | awk '{printf "%.2f GB", $1 / 1e9}'))"
