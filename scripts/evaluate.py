"""Evaluate a checkpoint: test accuracy, per-class accuracy, confusion matrix (CSV + PNG).

python scripts/evaluate.py outputs/RUN/checkpoints/best.safetensors
python scripts/evaluate.py outputs/RUN dataset.root=/data/cifar10 out=reports
"""

import sys

from tritoncnn.train.evaluate import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
