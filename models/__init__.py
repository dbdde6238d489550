"""DFormer / DFormerv2 model zoo for Jittor."""
