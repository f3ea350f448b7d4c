"""Models: loading and saving model directories, encoder families, students, tokenizers, and
reference-code checkpoints."""
