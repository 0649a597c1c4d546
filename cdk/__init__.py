"""AWS CDK app for the LoRA endpoint: app.py reads context, stack.py composes, components/ builds."""
