"""pytest plugin for CLIP robustness: options, metrics, statistics, gates and reports."""
