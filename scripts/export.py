"""Export a training checkpoint to safetensors and/or ONNX, with a parity check against tritoncnn.

python scripts/export.py outputs/RUN/checkpoints/best.safetensors format=all
python scripts/export.py outputs/RUN format=onnx out=exports normalize=false
"""

import sys

from tritoncnn.export.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main(sys.argv[1:]))
