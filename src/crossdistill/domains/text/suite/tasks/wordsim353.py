"""WordSim-353 (Finkelstein et al., 2002): 353 word pairs rated for relatedness."""

from crossdistill.domains.text.suite.base import TEXT_TASKS
from crossdistill.domains.text.suite.tasks._word_pairs import WordPairTask


@TEXT_TASKS.register("wordsim353")
class WordSim353(WordPairTask):
    """Spearman of cosine vs human relatedness on gensim's ``wordsim353.tsv`` (353 pairs)."""

    name = "wordsim353"
    file = "wordsim353.tsv"
