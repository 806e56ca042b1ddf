"""SimLex-999 (Hill, Reichart & Korhonen, 2015): 999 word pairs rated for similarity (not
relatedness: "coffee"/"cup" score low)."""

from crossdistill.domains.text.suite.base import TEXT_TASKS
from crossdistill.domains.text.suite.tasks._word_pairs import WordPairTask


@TEXT_TASKS.register("simlex999")
class SimLex999(WordPairTask):
    """Spearman of cosine vs human similarity on gensim's ``simlex999.txt`` (999 pairs)."""

    name = "simlex999"
    file = "simlex999.txt"
