"""ddprobe's built-in datasets, models, importers, distillers, probes and reporters: default plugins."""
