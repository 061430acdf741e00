"""Online serving: FastAPI app, model loader with hot swap."""
