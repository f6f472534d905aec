ARCH = "mgcf"
