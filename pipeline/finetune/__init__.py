"""Fine-tune the chosen subnet as a plain timm model and evaluate it on the test split."""
