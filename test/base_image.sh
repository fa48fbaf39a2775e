# Sourced by the container tests: sets and exports BASE_IMAGE, the image's base: $BASE_IMAGE if set, else the
# Dockerfile's default when present or pullable, else (offline build hosts) the stand-in that test/standin_base.sh
# builds (Debian bookworm, Python 3.11, the default base's torch 2.7.1 CUDA 12.6 build with its nvidia-*-cu12
# libraries from PyPI; reused once built).
STANDIN="panther-ensemble-standin-base:bookworm-py3.11-torch2.7.1-cu126"
if [[ -n "${BASE_IMAGE:-}" ]]; then
    echo "== base image $BASE_IMAGE (from BASE_IMAGE)"
else
    default_base="$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)"
    if docker image inspect "$default_base" >/dev/null 2>&1 || docker pull -q "$default_base"; then
        BASE_IMAGE="$default_base"
        echo "== base image $BASE_IMAGE"
    else
        echo "== cannot pull $default_base (offline build host): using the stand-in base $STANDIN"
        echo "   (Debian bookworm, Python 3.11, torch 2.7.1 for CUDA 12.6 with its NVIDIA libraries from PyPI, as in the default base)"
        if docker image inspect "$STANDIN" >/dev/null 2>&1; then
            echo "   stand-in base already built"
        else
            test/standin_base.sh "$STANDIN"
        fi
        BASE_IMAGE="$STANDIN"
    fi
fi
export BASE_IMAGE
