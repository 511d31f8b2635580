"""The keys of a training checkpoint's dictionary, named once (torchtune's ``training.MODEL_KEY`` style).

Lightning writes ``state_dict``, ``optimizer_states``, ``lr_schedulers``, ``callbacks``, ``global_step``
and ``loops``; the toolkit adds the rest, so one ``.ckpt`` rebuilds its run. Readers and writers
(``checkpoint_io``, ``weights``, the task modules, ``export`` / ``convert`` / ``predict``) use these
names, never string literals.
"""

STATE_DICT = "state_dict"  # Lightning: the module's parameters, keys prefixed "model."
GLOBAL_STEP = "global_step"  # Lightning: optimizer steps taken
CALLBACKS = "callbacks"  # Lightning: per-callback state (ModelCheckpoint's best_k_models)
RUN_CONFIG = "run_config"  # the resolved run config as a plain dict
TOKENIZER = "tokenizer"  # the run's tokenizer.json text (language models)
TOKENIZER_CONFIG = "tokenizer_config"  # its tokenizer_config.json text: special tokens, chat template (pretrained tokenizers)
BASE_MODEL = "base_model"  # adapter runs: {"path", "blake2b"} of the init_from model; the state dict holds only adapters
DATA_FINGERPRINT = "data_fingerprint"  # checksums of the token store the run trained on (language models)
PREPROCESSING = "preprocessing"  # fitted scalers and category codes (regression)
RNG = "rng"  # python / numpy / torch (/ cuda) generator states
ELAPSED_S = "elapsed_s"  # wall seconds trained across resumes
TRAIN_S = "train_s"  # the same without validation time
CONVERTED_FROM = "converted_from"  # transformer.convert: the source checkpoint
