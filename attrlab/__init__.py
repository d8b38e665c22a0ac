"""attrlab: feature attributions of image classifiers, while they train and how faithful they are."""

__version__ = "0.1.0"
