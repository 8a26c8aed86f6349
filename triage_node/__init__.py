"""triage-node: an on-premises DICOM node that screens hip radiographs for osteoporosis."""

__version__ = "0.1.0"
