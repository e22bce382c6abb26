"""covidscan: bulk COVID-19 classification of chest CT slices."""

__version__ = "0.1.0"
