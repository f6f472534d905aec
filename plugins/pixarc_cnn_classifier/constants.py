"""The classifier's constants, apart, so the plugin, its model and its trainer import them without each other."""

ARCH = "domainnet"  # the weights entries' architecture
FORMAT = 2  # weights layout: 2 = statistics → MLP ensemble + temperature
