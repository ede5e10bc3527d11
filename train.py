"""Entry point: `python train.py experiment=distill_mlp` (see README)."""

from kdlab.run import main

if __name__ == "__main__":
    main()
