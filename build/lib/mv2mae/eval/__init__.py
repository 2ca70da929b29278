"""Evaluation: multi-clip × multi-crop testing, per-camera and fused accuracy, probes, the demo report."""
