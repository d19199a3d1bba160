"""The built-in experiment (arXiv 2511.10435): the eight-shape dataset, the autoencoder, its config, training, the
sweep and the paper's claims. It uses the library like any user would; nothing in the library imports it."""
