# Demo, cross-entropy only: the baseline `make demo` compares CALS against.
_base_ = './_base_/demo_synthetic_streets.py'
