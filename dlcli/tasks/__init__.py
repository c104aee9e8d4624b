"""Per-family recipes (Task subclasses) driven by the one training loop in dlcli/train.py."""
