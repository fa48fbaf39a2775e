# Sourced by gpu.sh and t4_check.sh, from the repo root: a machine whose Python has torch but not the other
# dependencies gets them from .whl/ (benchmarks/fetch_wheels.sh), the repository's src/ goes on the path, and the
# device is printed.
if ! python3 -c "import nnunetv2, SimpleITK" 2>/dev/null; then
    site=/tmp/panther-site
    # by name from .whl/, so pip takes the wheel that fits this Python where there are several
    python3 -m pip install -q --no-index --find-links .whl --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" $(ls .whl/*.whl | xargs -n1 basename | cut -d- -f1 | sort -u)
    tar -C "$site" -xJf .whl/simpleitk.tar.xz
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
