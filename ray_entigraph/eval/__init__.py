"""Evaluation: closed-book question answering (QuALITY layout) and perplexity, per model, with reports."""
