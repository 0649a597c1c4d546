"""Tests for LoRA training (scripts/training*.py, lora_endpoint/commands/train.py) and the demo model."""
