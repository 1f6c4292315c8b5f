"""Recipes: one family's networks, optimizers and train step, on the one shared loop."""
