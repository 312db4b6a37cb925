"""centerexp: run, reproduce and compare center-loss experiments on MNIST."""

__version__ = "0.1.0"
