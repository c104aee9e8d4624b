"""Datasets: MNIST-format images, toy truth tables, parallel text."""
