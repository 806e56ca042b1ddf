"""Domain toolkits, each a plug-in package on the core (listed as ``crossdistill.plugins`` entry
points, so their sources, models, suites and exporters register like any user's):

- ``text``: sentence corpora, tokenizer training, static and tiny-transformer students, the
  text evaluation suite, the sentence-transformers export format;
- ``ranking``: triples files, WordNet ranking data, the cross-encoder teacher, dual-encoder
  students, hard-negative mining, the retrieval suite;
- ``speech``: wav I/O, resampling and log-mel front end, synthetic speech, paired speech/text
  sources, speech students, the speech-text suite;
- ``vision``: Fashion-MNIST images paired with class texts, the image-text suite.

The core never imports them.
"""
