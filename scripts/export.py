"""Ship a run: `python scripts/export.py <run folder> [--out DIR] [--formats torchscript,onnx] [--no-bench]`.

Writes export/<net>.torchscript.pt and export/<net>.onnx (raw uint8 pixels in, logits out; each net
behind the normalisation it was trained with), checks each against PyTorch on the whole test set,
times the teacher (or each ensemble member) and the student, and writes deploy.md and deploy.json;
then export/<net>.safetensors (+ <net>.yaml) and the model card export/README.md for the run's own net.
The logic lives in kdlab.deploy; this file only hands over the arguments.
Exit status: 0 ok, 1 an export failed its checks, 2 bad input or missing packages.
"""

import sys

from kdlab.deploy.command import main

if __name__ == "__main__":
    sys.exit(main())
