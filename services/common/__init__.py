"""The skeleton every service shares: settings, errors, middleware, metrics, images, serving."""
