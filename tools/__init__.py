"""Maintainer tools, not part of the installed packages: run from the repository root.

python -m tools.backbone_table [--readme README.md]   # the README's backbone table
python -m tools.compat_table [--readme README.md]     # the README's smp / timm compatibility table
python -m tools.smp_suite PATH_TO_SMP_CHECKOUT        # smp's own encoder and model tests on our encoders
"""
