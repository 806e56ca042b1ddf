"""The core: Knowledge, taps, the Teacher/Student wrappers, adapters and the Distiller.

Everything above this layer (data, models, store, training, runs) is built around these nouns;
nothing here knows where data, models or teacher outputs come from.
"""
