"""Continued pretraining: tokenize and pack texts into blocks, mix replay in, train on Ray Train, export."""
