"""tinybert: compress a fine-tuned BERT-style model into a TinyBERT student for your own data."""

__version__ = "0.1.0"
