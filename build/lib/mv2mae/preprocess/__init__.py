"""Offline preprocessing: dataset adapters, the synthetic generator, decoding, alignment, motion, writing."""
