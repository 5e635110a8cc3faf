"""`python -m tasks.depth fit|validate|test|predict [--backbone NAME] [--config configs/depth/X.yaml]`."""

from tasks.depth import main

main()
