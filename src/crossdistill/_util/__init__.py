"""Small utilities every layer may use: atomic files, hashing, progress bars, validation
messages. Nothing here knows a crossdistill noun."""
