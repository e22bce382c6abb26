"""Celery workers that classify scans in batches."""
