"""Entry point: `python -m tasks.segmentation fit|validate|test|predict [--backbone NAME] [--config ...]`."""

from tasks.segmentation.cli import main

if __name__ == "__main__":
    main()
