"""SVR's constants, apart, so the codec and the trainer import them without each other."""

ARCH = "svr"  # the weights entries' architecture
