"""Tests for LoRA training (scripts/training*.py, scripts/train_lora.py) and the demo model."""
