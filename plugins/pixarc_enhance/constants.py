"""The enhancement filter's constants, apart, so the codec and the trainer import them without each other."""

ARCH = "enhance-cnn"  # the weights entries' architecture
