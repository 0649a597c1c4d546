"""LoRA fine-tuning with transformers + peft: ``trainer.py`` (a seeded AdamW loop, pretraining for the demo's
tiny base) and ``data.py`` (JSONL examples, prompt formats, the train / eval split)."""
