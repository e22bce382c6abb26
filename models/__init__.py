"""The ResNet50 CT classifier: preprocessing, loading and batched inference.

Depends on NumPy, OpenCV and TensorFlow only (no Flask, Celery or SQL). Import
the submodules you need; importing this package loads nothing heavy.
"""
