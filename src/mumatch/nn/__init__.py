"""Building blocks shared by the modules: encoders, discriminators, likelihoods."""
