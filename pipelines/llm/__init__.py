"""The generative model family (chat data, SFT collation, the generation engine, evaluation): its place
in the layout, filled by the generative-model work."""
