"""Models: taps (forward hooks), Teacher/Student wrappers, model construction, the zoo."""
