"""Everything that touches torch: models, methods, data, training, evaluation, merging,
generation, memory estimates and the doctor's rules. Knows nothing of Huey or Textual.
"""
