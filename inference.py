"""Grand Challenge entrypoint: `panther-ensemble predict` with the GC defaults (/input -> /output)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # runs from a checkout without installing

from panther_ensemble.cli import inference_console_main  # noqa: E402

if __name__ == "__main__":
    inference_console_main()
