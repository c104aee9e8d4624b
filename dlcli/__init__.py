"""dlcli: train and sample the classic deep-learning models from one command line."""

__version__ = "0.1.0"
