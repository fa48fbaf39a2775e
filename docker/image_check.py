"""Build-time checks of the image (run by the Dockerfile; a failure fails the build, not a job on GC).

    python image_check.py onnxruntime   ONNX Runtime's CUDA provider loads with every CUDA and cuDNN library it needs
                                        (no GPU needed to load them), in a process without torch, as the product's
                                        onnxruntime backend may run
    python image_check.py versions      one line: Python, torch (CUDA, cuDNN), torchvision, ONNX Runtime providers
"""

import ctypes
import os
import platform
import sys


def check_onnxruntime() -> None:
    import onnxruntime as ort

    ort.preload_dlls(msvc=False)  # the nvidia-*-cu12 libraries of the base's torch, else the system's
    provider = os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime_providers_cuda.so")
    try:
        ctypes.CDLL(provider)
    except OSError as e:
        sys.exit(f"onnxruntime CUDA provider check FAILED: {e} (onnxruntime-gpu needs CUDA 12 and cuDNN 9 in the "
                 "image: the base image lacks a library)")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit(f"onnxruntime CUDA provider check FAILED: providers are {ort.get_available_providers()}")
    print("onnxruntime CUDA provider: loads, with every CUDA and cuDNN library it needs")


def print_versions() -> None:
    import nnunetv2  # noqa: F401  (the product's imports, all of them importable)
    import onnxruntime as ort
    import onnxscript  # noqa: F401
    import SimpleITK  # noqa: F401
    import surface_distance  # noqa: F401
    import torch
    import torchvision

    code = torch.backends.cudnn.version()  # reads the library's version: no GPU needed
    cudnn = ".".join(map(str, (code // 10000, code // 100 % 100, code % 100))) if code else "none"
    print(f"image: Python {platform.python_version()} | torch {torch.__version__} (CUDA {torch.version.cuda}, "
          f"cuDNN {cudnn}) | torchvision {torchvision.__version__} | onnxruntime {ort.__version__}:",
          *ort.get_available_providers())


if __name__ == "__main__":
    {"onnxruntime": check_onnxruntime, "versions": print_versions}[sys.argv[1]]()
