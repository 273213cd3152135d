"""Inference: prompts, coordinate transforms, the predictor, tiles, the embedding cache, batch embedding."""
