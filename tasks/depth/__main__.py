"""`python -m tasks.depth fit|validate|test|predict [--backbone NAME] [--config configs/depth/X.yaml]`."""

from tasks.depth.cli import main

if __name__ == "__main__":
    main()
