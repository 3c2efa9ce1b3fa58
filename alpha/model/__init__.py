"""The model: the GPT and its FFN activations."""
