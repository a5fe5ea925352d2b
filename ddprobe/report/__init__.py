"""Writers that turn a study's results into files, and the figures probes draw."""
