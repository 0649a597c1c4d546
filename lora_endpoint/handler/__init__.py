"""lora-endpoint inference handler: base model + LoRA adapters behind SageMaker and DJL Serving.

Importing this package is cheap on purpose (DJL imports ``model.py`` several times): torch,
transformers and peft are imported only when the model is loaded.
"""

from lora_endpoint import __version__

__all__ = ["__version__"]
