"""Data layer: corpora, byte-level BPE tokenizer, cached token memmaps and batching.

Quick start::

    from dynroute.data import prepare_data
    data = prepare_data()                       # stdlib corpus, vocab 4096, cached
    x, y = data.train.batch(8, 256)             # LongTensors [8, 256]
"""

from dynroute.data.batches import (
    TokenDataset,
    eval_windows,
    get_batch,
    iter_eval_batches,
    num_eval_windows,
)
from dynroute.data.cache import CACHE_ENV_VAR, default_cache_dir, fingerprint
from dynroute.data.corpus import (
    CorpusError,
    corpus_key,
    is_saved_dataset,
    load_corpus,
    stdlib_corpus,
    stdlib_files,
)
from dynroute.data.prepare import DEFAULT_TOKENIZER_TRAIN_BYTES, PreparedData, prepare_data
from dynroute.data.splitting import VALIDATION_FRACTION, Split, split_names, split_text
from dynroute.data.tokenizer import (
    DEFAULT_VOCAB_SIZE,
    EOS_TOKEN,
    as_hf_tokenizer,
    eos_id,
    get_tokenizer,
    tokenizer_fingerprint,
    train_tokenizer,
)
from dynroute.data.tokens import (
    encode_documents,
    get_token_file,
    load_token_file,
    token_dtype,
    write_token_file,
)

__all__ = [
    "CACHE_ENV_VAR",
    "DEFAULT_TOKENIZER_TRAIN_BYTES",
    "DEFAULT_VOCAB_SIZE",
    "EOS_TOKEN",
    "VALIDATION_FRACTION",
    "CorpusError",
    "PreparedData",
    "Split",
    "TokenDataset",
    "as_hf_tokenizer",
    "corpus_key",
    "default_cache_dir",
    "encode_documents",
    "eos_id",
    "eval_windows",
    "fingerprint",
    "get_batch",
    "get_token_file",
    "get_tokenizer",
    "is_saved_dataset",
    "iter_eval_batches",
    "load_corpus",
    "load_token_file",
    "num_eval_windows",
    "prepare_data",
    "split_names",
    "split_text",
    "stdlib_corpus",
    "stdlib_files",
    "token_dtype",
    "tokenizer_fingerprint",
    "train_tokenizer",
    "write_token_file",
]
