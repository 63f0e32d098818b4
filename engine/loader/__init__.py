from pdpair.engine.loader.load import LoadedModel, load_model, resolve_dtype, weights_digest
from pdpair.engine.loader.tokenizer import Tokenizer

__all__ = ["LoadedModel", "Tokenizer", "load_model", "resolve_dtype", "weights_digest"]
