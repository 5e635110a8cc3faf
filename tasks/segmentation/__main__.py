"""`python -m tasks.segmentation fit|validate|test|predict [--backbone NAME] [--config configs/segmentation/X.yaml]`."""

from tasks.segmentation.cli import main

if __name__ == "__main__":
    main()
