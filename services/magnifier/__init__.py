"""The magnifier service: crops regions of an image and upscales them with super-resolution."""
