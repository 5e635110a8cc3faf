"""`python -m tasks.detection fit|validate|test|predict [--backbone NAME] [--config configs/detection/X.yaml]`."""

from tasks.detection.cli import main

if __name__ == "__main__":
    main()
