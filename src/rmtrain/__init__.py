"""rmtrain: pairwise (Bradley-Terry) reward models on Hugging Face causal LMs."""

__version__ = "0.1.0"
