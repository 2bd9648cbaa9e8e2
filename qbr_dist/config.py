"""Typed, validated configuration: one dataclass per stage plus the run, loaded from TOML.

`load_config(path, overrides=["train.lr=3e-4", ...])` reads the file, applies `--set` overrides
(values parsed as TOML literals, bare words as strings) and validates every key. An unknown key
or a bad value raises ConfigError with a one-line message naming the key.
"""
from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from qbr_dist.data.fetch import DATASETS
from qbr_dist.data.split import MIN_SPLIT_LENGTH
from qbr_dist.data.tables import INTERACTION_FIELDS


class ConfigError(ValueError):
    """A config that cannot run; `key` (section.key) is the setting at fault, when one is, and `related` the
    settings it was checked against."""

    def __init__(self, message: str, key: str | None = None, related: tuple[str, ...] = ()):
        super().__init__(message)
        self.key = key
        self.related = related


def _settings_key(section, *, later_options: tuple[str, ...]) -> dict:
    """A section's settings for a stage key, leaving out each of `later_options` while it is 0 (off), so a
    stage finished before that option existed keeps its key."""
    return {name: value for name, value in section.__dict__.items() if name not in later_options or value}


def _without(section, resources: tuple[str, ...]) -> dict:
    """A section's settings for a stage key, with those that change where or how fast it runs, never what it
    computes, at their defaults: a rerun on more actors or into another shards folder redoes nothing, and
    the key of a default config is what it was before they were set aside."""
    defaults = type(section)()
    return {name: getattr(defaults, name) if name in resources else value for name, value in section.__dict__.items()}


@dataclass
class RunConfig:
    name: str = "default"  # the run directory's name, also the metrics' `run` label
    root: str = "runs"  # run directory is <root>/<name>
    seed: int = 0  # seeds structure, fusion, quantization and training; `qbr run --seeds N` adds 1 per seed
    cache_dir: str = ".cache/data"  # where named datasets are fetched to and verified
    # `qbr run` also runs structure -> shards -> encode -> fusion -> quantize (-> retokenize with a cold-item
    # split), content k-NN and Q-BERT4Rec; false: popularity and BERT4Rec only
    tokenize: bool = True

    def check(self) -> None:
        _require(bool(self.name) and "/" not in self.name and self.name not in (".", ".."), "run.name",
                 "a non-empty name without '/', not '.' or '..'")
        _require(bool(self.root) and "://" not in self.root, "run.root",
                 "a path on a file system (for object storage, mount the bucket and give the mount path)")
        _require(self.seed >= 0, "run.seed", "an integer >= 0")


@dataclass
class DataConfig:
    dataset: str = "ml-100k"  # a fetchable dataset name, or "files" to read `interactions`/`catalog`
    # .inter, .csv or .parquet with fields user_id, item_id, timestamp (seconds since 1970, as numbers or digits; ISO
    # 8601 text; a date or timestamp type), or Amazon reviews .json(l)(.gz); used when dataset = "files"
    interactions: str = ""
    # .item, .csv or .parquet with item_id and the text_fields, or Amazon metadata .json(l)(.gz); optional with
    # dataset = "files" (without it the items are the interactions' ones, with no text)
    catalog: str = ""
    # catalog fields joined into each item's text for the text encoder
    text_fields: list[str] = field(default_factory=lambda: ["movie_title", "release_year", "class"])
    user_id_field: str = ""  # the interactions' own name for user_id (e.g. customer_id); empty: user_id
    item_id_field: str = ""  # both files' own name for item_id (e.g. sku; not Amazon files); empty: item_id
    timestamp_field: str = ""  # the interactions' own name for timestamp (e.g. event_time); empty: timestamp
    k_core: int = 0  # repeatedly drop users and items with fewer interactions than this; 0 or 1: keep all
    max_history: int = 0  # keep each user's newest this many interactions (after k_core); 0: keep all
    # Cold-item split (an evaluation protocol): this share of the catalog, drawn uniformly with
    # `cold_seed`, is removed from every training and validation input; users whose test target is
    # a cold item are evaluated apart. 0 trains on every item, as a production run would.
    cold_fraction: float = 0.0
    cold_seed: int = 0  # seed of the cold-item draw (independent of run.seed, so seeds share one split)

    def check(self) -> None:
        _require(self.k_core >= 0, "data.k_core", "an integer >= 0")
        _require(self.max_history == 0 or self.max_history >= MIN_SPLIT_LENGTH, "data.max_history",
                 f"0 or an integer >= {MIN_SPLIT_LENGTH} (a leave-one-out split needs that many)")
        _require(0 <= self.cold_fraction < 1, "data.cold_fraction", "a number in [0, 1)")
        _require(self.cold_seed >= 0, "data.cold_seed", "an integer >= 0")
        own = [getattr(self, f"{field}_field") or field for field in INTERACTION_FIELDS]
        _require(len(set(own)) == len(own), "data.item_id_field", "user_id_field, item_id_field and "
                 f"timestamp_field to name three different fields (they name {', '.join(own)})",
                 related=("data.user_id_field", "data.timestamp_field"))
        _require(self.dataset == "files" or self.dataset in DATASETS, "data.dataset",
                 f"'files' (your own data.interactions and data.catalog) or a dataset to fetch: "
                 f"{', '.join(sorted(DATASETS))}")
        if self.dataset == "files":
            _require(bool(self.interactions), "data.interactions", "a file path when data.dataset = 'files'",
                     related=("data.dataset",))
        else:
            for key in ("interactions", "catalog"):
                _require(not getattr(self, key), f"data.{key}", f"no file while data.dataset = '{self.dataset}', "
                         "which is fetched; set data.dataset = 'files' to read your own", related=("data.dataset",))

    def key(self) -> dict:
        """The settings that change the split."""
        return _settings_key(self, later_options=("max_history", *(f"{field}_field" for field in INTERACTION_FIELDS)))

    def field_names(self) -> dict[str, str]:
        """{field the readers need: the files' own name for it}, for those the config renames."""
        names = {field: getattr(self, f"{field}_field") for field in INTERACTION_FIELDS}
        return {field: name for field, name in names.items() if name}


@dataclass
class ShardsConfig:
    root: str = "shards"  # shards go to <root>/<name>/
    name: str = ""  # empty: the run name
    prebuilt_dir: str = ""  # shards written elsewhere (e.g. `qbr data synth`), with index.json: used as they are
    max_bytes: int = 1_000_000_000  # a shard is closed once its payload reaches this size (tar headers: +512 B a file)
    images_dir: str = ""  # folder of <key>.jpg files (key: the item id, percent-encoded but letters, digits, '_-~')
    fetch_images: bool = False  # download the catalog's image_url column into images_dir first
    fetch_concurrency: int = 8  # image downloads at once
    fetch_retries: int = 2  # further tries of a failed download before the item is kept without its image
    fetch_timeout_s: float = 10.0  # seconds per download try
    fetch_max_bytes: int = 20_000_000  # a larger download is abandoned
    image_max_side: int = 512  # images are re-encoded to at most this many pixels on the longer side
    max_image_pixels: int = 50_000_000  # larger images are refused before decoding (decompression bombs)
    jpeg_quality: int = 90  # quality of the re-encoded JPEGs in the shards

    def check(self) -> None:
        _require(self.max_bytes >= 1024, "shards.max_bytes", "an integer >= 1024")
        _require(self.image_max_side >= 8, "shards.image_max_side", "an integer >= 8")
        _require(self.max_image_pixels >= 64, "shards.max_image_pixels", "an integer >= 64")
        _require(1 <= self.jpeg_quality <= 95, "shards.jpeg_quality", "an integer in [1, 95]")
        _require("/" not in self.name, "shards.name", "a name without '/'")
        _require(bool(self.images_dir) or not self.fetch_images, "shards.images_dir",
                 "a folder when shards.fetch_images is true", related=("shards.fetch_images",))
        _require(self.fetch_concurrency >= 1, "shards.fetch_concurrency", "an integer >= 1")
        _require(self.fetch_retries >= 0, "shards.fetch_retries", "an integer >= 0")
        _require(self.fetch_timeout_s > 0, "shards.fetch_timeout_s", "a number > 0")

    def key(self) -> dict:
        return _without(self, ("root", "name", "prebuilt_dir", "fetch_concurrency"))


@dataclass
class EncodeConfig:
    text_model: str = "all-MiniLM-L6-v2"  # the packaged default, or a local model folder
    image_model: str = ""  # an open_clip model name; empty: items get no image embedding
    image_weights: str = ""  # local checkpoint file for image_model
    image_random_init: bool = False  # true only on purpose (tests, benchmarks): random image weights
    image_model_config: str = ""  # JSON file defining a custom open_clip architecture
    batch_size: int = 64  # items per encoder call
    actors: int = 1  # encoder actors in the pool
    cpus_per_actor: float = 0.5  # Ray resources of each encoder actor
    gpus_per_actor: float = 0.0  # > 0 puts the encoders on GPUs
    max_image_pixels: int = 50_000_000  # larger images are refused before decoding

    def check(self) -> None:
        _require(self.batch_size >= 1, "encode.batch_size", "an integer >= 1")
        _require(self.actors >= 1, "encode.actors", "an integer >= 1")
        _require(self.cpus_per_actor > 0, "encode.cpus_per_actor", "a number > 0")
        _require(self.gpus_per_actor >= 0, "encode.gpus_per_actor", "a number >= 0")
        _require(self.max_image_pixels >= 64, "encode.max_image_pixels", "an integer >= 64")

    def key(self) -> dict:
        return _without(self, ("actors", "cpus_per_actor", "gpus_per_actor"))


@dataclass
class StructureConfig:
    fields: list[str] = field(default_factory=list)  # catalog fields made into tokens, e.g. ["category", "brand"]
    separator: str = ""  # split a field's value into several tokens on this string; empty: one token per value
    min_count: int = 2  # tokens found in fewer items are dropped
    window: int = 3  # items at most this many positions apart in a training sequence co-occur
    dim: int = 32  # co-occurrence embedding width (PPMI + truncated SVD)

    def check(self) -> None:
        _require(self.min_count >= 1, "structure.min_count", "an integer >= 1")
        _require(self.window >= 1, "structure.window", "an integer >= 1")
        _require(self.dim >= 1, "structure.dim", "an integer >= 1")


@dataclass
class FusionConfig:
    dim: int = 64  # width of the fused vectors (and of the ID vectors they start from)
    layers: int = 2  # fusion layers, each with its modality attention and gate
    temperature: float = 0.1  # initial modality-softmax temperature (learned)
    # at inference an item stops at the first layer whose gate is below this; low, because trained gates sit
    # near 0.5 (MovieLens-100K, first layer: mean 0.48), where a 0.5 cut left 84 % of items at their bare ID vector
    gate_threshold: float = 0.1
    dropout: float = 0.1  # in the fusion layers, training only
    contrastive_temperature: float = 0.1  # InfoNCE temperature
    id_loss_weight: float = 1.0  # weight of the content head's ID-prediction loss
    max_tokens: int = 16  # field tokens kept per item
    batch_size: int = 512  # (anchor, neighbour) pairs per step, global
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW
    warmup_steps: int = 50  # linear warm-up steps
    epochs: int = 10  # passes over the (item, next item) pairs
    shuffle_buffer: int = 20000  # rows of Ray Data's local shuffle per worker
    infer_batch: int = 4096  # items per forward pass when writing the fused vectors

    def check(self) -> None:
        _require(self.dim >= 2, "fusion.dim", "an integer >= 2")
        _require(self.layers >= 1, "fusion.layers", "an integer >= 1")
        _require(self.temperature > 0, "fusion.temperature", "a number > 0")
        _require(0 <= self.gate_threshold < 1, "fusion.gate_threshold", "a number in [0, 1)")
        _require(0 <= self.dropout < 1, "fusion.dropout", "a number in [0, 1)")
        _require(self.contrastive_temperature > 0, "fusion.contrastive_temperature", "a number > 0")
        _require(self.id_loss_weight >= 0, "fusion.id_loss_weight", "a number >= 0")
        _require(self.max_tokens >= 1, "fusion.max_tokens", "an integer >= 1")
        _require(self.batch_size >= 2, "fusion.batch_size", "an integer >= 2")
        _require(self.lr > 0, "fusion.lr", "a number > 0")
        _require(self.weight_decay >= 0, "fusion.weight_decay", "a number >= 0")
        _require(self.warmup_steps >= 0, "fusion.warmup_steps", "an integer >= 0")
        _require(self.epochs >= 1, "fusion.epochs", "an integer >= 1")
        _require(self.shuffle_buffer >= 1, "fusion.shuffle_buffer", "an integer >= 1")
        _require(self.infer_batch >= 1, "fusion.infer_batch", "an integer >= 1")


@dataclass
class QuantConfig:
    input: str = "fused"  # the vectors to quantize: "fused" (fusion stage), or "text_emb" / "image_emb" (encode)
    mode: str = "rkmeans"  # "rkmeans" (residual k-means) or "rqvae" (MLP encoder/decoder around EMA codebooks)
    levels: int = 3  # residual levels: codes per item before the disambiguation suffix
    codebook_size: int = 256  # codes per level
    iterations: int = 25  # Lloyd iterations per level (fewer once the inertia stops improving)
    sample_size: int = 65536  # vectors gathered from all workers for k-means++ seeding
    chunk_size: int = 65536  # vectors assigned at once: bounds memory per worker
    retokenize_batch_size: int = 4096  # items per retokenizer actor call
    retokenize_actors: int = 1  # Ray Data actors that assign codes (the retokenize stage, `qbr retokenize`)
    retokenize_cpus_per_actor: float = 0.5  # Ray resources of each of them
    rqvae_hidden: list[int] = field(default_factory=lambda: [256])  # encoder widths; the decoder mirrors them
    rqvae_latent_dim: int = 64  # width of the latent the codebooks quantize
    rqvae_commitment: float = 0.25  # weight of the commitment loss
    rqvae_ema_decay: float = 0.99  # codebook moving-average decay
    rqvae_dead_fraction: float = 0.1  # a code below this share of an even split of the batch is re-seeded
    rqvae_epochs: int = 20  # passes over the catalog
    rqvae_batch_size: int = 512  # global batch, split over the workers
    rqvae_lr: float = 1e-3  # AdamW learning rate

    def check(self) -> None:
        _require(self.retokenize_batch_size >= 1, "quant.retokenize_batch_size", "an integer >= 1")
        _require(self.retokenize_actors >= 1, "quant.retokenize_actors", "an integer >= 1")
        _require(self.retokenize_cpus_per_actor > 0, "quant.retokenize_cpus_per_actor", "a number > 0")
        _require(self.input in ("fused", "text_emb", "image_emb"), "quant.input",
                 "'fused', 'text_emb' or 'image_emb'")
        _require(self.mode in ("rkmeans", "rqvae"), "quant.mode", "'rkmeans' or 'rqvae'")
        _require(all(w >= 1 for w in self.rqvae_hidden), "quant.rqvae_hidden", "a list of integers >= 1")
        _require(self.rqvae_latent_dim >= 1, "quant.rqvae_latent_dim", "an integer >= 1")
        _require(self.rqvae_commitment >= 0, "quant.rqvae_commitment", "a number >= 0")
        _require(0 < self.rqvae_ema_decay < 1, "quant.rqvae_ema_decay", "a number in (0, 1)")
        _require(0 <= self.rqvae_dead_fraction < 1, "quant.rqvae_dead_fraction", "a number in [0, 1)")
        _require(self.rqvae_epochs >= 1, "quant.rqvae_epochs", "an integer >= 1")
        _require(self.rqvae_batch_size >= 2, "quant.rqvae_batch_size", "an integer >= 2")
        _require(self.rqvae_lr > 0, "quant.rqvae_lr", "a number > 0")
        _require(self.levels >= 1, "quant.levels", "an integer >= 1")
        _require(self.codebook_size >= 2, "quant.codebook_size", "an integer >= 2")
        _require(self.iterations >= 1, "quant.iterations", "an integer >= 1")
        _require(self.sample_size >= 1, "quant.sample_size", "an integer >= 1")
        _require(self.chunk_size >= 1, "quant.chunk_size", "an integer >= 1")

    def key(self) -> dict:
        return _without(self, ("retokenize_batch_size", "retokenize_actors", "retokenize_cpus_per_actor"))


@dataclass
class RuntimeConfig:
    num_workers: int = 2  # Ray Train workers, one DeepSpeed rank each
    use_gpu: bool = False  # one GPU per worker (NCCL); false: CPU and gloo
    cpus_per_worker: float = 0.5  # fractional so Ray Data tasks still get CPU on small machines
    threads_per_worker: int = 1  # torch threads in each worker
    zero_stage: int = 2  # DeepSpeed ZeRO stage, 0 to 3 (0: nothing is exported as safetensors)
    precision: str = "fp32"  # "fp32" or "bf16"
    grad_clip: float = 1.0  # global gradient-norm clip; 0 disables it
    max_failures: int = 1  # restarts of a failed worker group from its latest checkpoint; -1: no limit
    checkpoint_every: int = 200  # optimizer steps between checkpoints
    keep_checkpoints: int = 2  # latest Ray Train checkpoints kept per training stage
    ray_num_cpus: int = 0  # embedded Ray only; 0 = all CPUs of this machine
    object_store_mb: int = 512  # embedded Ray only
    dashboard: bool = True  # embedded Ray only: dashboard on 127.0.0.1:8265; off, Ray Train's state checks warn often

    def check(self) -> None:
        _require(self.num_workers >= 1, "runtime.num_workers", "an integer >= 1")
        _require(self.cpus_per_worker > 0, "runtime.cpus_per_worker", "a number > 0")
        _require(self.threads_per_worker >= 1, "runtime.threads_per_worker", "an integer >= 1")
        _require(self.zero_stage in (0, 1, 2, 3), "runtime.zero_stage", "one of 0, 1, 2, 3")
        _require(self.precision in ("fp32", "bf16"), "runtime.precision", "'fp32' or 'bf16'")
        _require(self.grad_clip >= 0, "runtime.grad_clip", "a number >= 0 (0 disables clipping)")
        _require(self.max_failures >= -1, "runtime.max_failures", "an integer >= -1 (-1 = retry forever)")
        _require(self.checkpoint_every >= 1, "runtime.checkpoint_every", "an integer >= 1")
        _require(self.keep_checkpoints >= 1, "runtime.keep_checkpoints", "an integer >= 1")
        _require(self.ray_num_cpus >= 0, "runtime.ray_num_cpus", "an integer >= 0")
        _require(self.object_store_mb >= 64, "runtime.object_store_mb", "an integer >= 64")


@dataclass
class ModelConfig:
    # Q-BERT4Rec's items: "semantic" (code embeddings), "hybrid" (+ ID vector); "id": no Q-BERT
    tokens: str = "semantic"
    hidden: int = 64  # BERT width (a multiple of heads)
    layers: int = 2  # BERT layers
    heads: int = 2  # attention heads
    max_len: int = 50  # items in an input sequence, the mask token included
    dropout: float = 0.2  # BERT hidden and attention dropout
    # hybrid only: chance that a training lookup leaves out an item's ID vector and bias, so that its
    # codes must place it without them (as cold items have no trained ID vector of their own)
    id_dropout: float = 0.0
    # semantic and hybrid: start the code tables from the quantize stage's codebooks (projected to
    # model.hidden) instead of random rows, and hybrid ID vectors at zero, so items start where the
    # tokenizer placed them
    codebook_init: bool = False
    # hybrid only: score an item no training saw (a cold item) by its codes alone, as model.id_dropout
    # trains them to, instead of with the mean ID vector and bias of the trained items sharing its longest
    # code prefix
    cold_codes_only: bool = False

    def check(self) -> None:
        _require(self.tokens in ("id", "semantic", "hybrid"), "model.tokens", "'id', 'semantic' or 'hybrid'")
        _require(self.hidden >= 1 and self.hidden % self.heads == 0, "model.hidden", "a multiple of model.heads",
                 related=("model.heads",))
        _require(self.layers >= 1, "model.layers", "an integer >= 1")
        _require(self.max_len >= 2, "model.max_len", "an integer >= 2")
        _require(0 <= self.dropout < 1, "model.dropout", "a number in [0, 1)")
        _require(0 <= self.id_dropout < 1, "model.id_dropout", "a number in [0, 1)")
        _require(self.id_dropout == 0 or self.tokens == "hybrid", "model.id_dropout",
                 "0 unless model.tokens = 'hybrid' (only hybrid items have an ID vector to leave out)",
                 related=("model.tokens",))
        _require(not self.codebook_init or self.tokens != "id", "model.codebook_init",
                 "false when model.tokens = 'id' (item IDs have no code tables)", related=("model.tokens",))
        _require(not self.cold_codes_only or self.tokens == "hybrid", "model.cold_codes_only",
                 "false unless model.tokens = 'hybrid' (only hybrid items have an ID part to leave out)",
                 related=("model.tokens",))

    def key(self) -> dict:
        """The settings that change a trained model."""
        return _settings_key(self, later_options=("id_dropout", "codebook_init", "cold_codes_only"))


@dataclass
class TrainConfig:
    batch_size: int = 256  # global, split evenly over workers
    lr: float = 1e-3  # AdamW peak learning rate of pretraining
    weight_decay: float = 0.01  # AdamW
    mask_ratio: float = 0.2  # share of a sequence's items masked by the "random" strategy
    pretrain_last_item_prob: float = 0.1  # share of "random" sequences masked at the last item only
    mask_weights: list[float] = field(default_factory=lambda: [1.0, 0.0, 0.0, 0.0])  # random, span, tail, multi_region
    mask_mean_span: float = 3.0  # mean length of a span (geometric), for span and multi_region
    mask_tail: int = 2  # items masked at the end by "tail"
    mask_regions: int = 2  # spans of "multi_region"
    window_stride: int = 10  # pretraining windows of model.max_len items every `window_stride` items
    finetune_stride: int = 2  # fine-tuning windows (one target each, the newest item) every N items
    shuffle_buffer: int = 20000  # rows of Ray Data's local shuffle per worker
    pretrain_epochs: int = 80  # budget (the linear schedule decays over it); early stopping may end sooner
    finetune_epochs: int = 6  # budget of fine-tuning (last position masked); 0 skips it
    finetune_lr: float = 3e-4  # AdamW peak learning rate of fine-tuning
    warmup_steps: int = 100  # linear warm-up at the start of each phase
    lr_schedule: str = "linear"  # "linear": decay to 0 over the phase's epoch budget; "constant"
    patience: int = 6  # evaluations without validation improvement before stopping a phase
    eval_every: int = 4  # pretraining epochs between validation evaluations
    finetune_eval_every: int = 1  # fine-tuning epochs between validation evaluations
    sampled_softmax_above: int = 200_000  # catalogs with more items train on sampled softmax (0: always)
    negatives: int = 1024  # popularity-sampled negatives per step of sampled softmax

    def check(self) -> None:
        _require(self.batch_size >= 1, "train.batch_size", "an integer >= 1")
        _require(self.lr > 0, "train.lr", "a number > 0")
        _require(self.finetune_lr > 0, "train.finetune_lr", "a number > 0")
        _require(self.weight_decay >= 0, "train.weight_decay", "a number >= 0")
        _require(0 < self.mask_ratio < 1, "train.mask_ratio", "a number in (0, 1)")
        _require(0 <= self.pretrain_last_item_prob <= 1, "train.pretrain_last_item_prob", "a number in [0, 1]")
        _require(len(self.mask_weights) == 4 and min(self.mask_weights) >= 0 and sum(self.mask_weights) > 0,
                 "train.mask_weights", "4 weights >= 0 (random, span, tail, multi_region), not all 0")
        _require(self.mask_mean_span >= 1, "train.mask_mean_span", "a number >= 1")
        _require(self.mask_tail >= 1, "train.mask_tail", "an integer >= 1")
        _require(self.mask_regions >= 1, "train.mask_regions", "an integer >= 1")
        _require(self.window_stride >= 1, "train.window_stride", "an integer >= 1")
        _require(self.finetune_stride >= 1, "train.finetune_stride", "an integer >= 1")
        _require(self.shuffle_buffer >= 1, "train.shuffle_buffer", "an integer >= 1")
        _require(self.pretrain_epochs >= 0, "train.pretrain_epochs", "an integer >= 0")
        _require(self.finetune_epochs >= 0, "train.finetune_epochs", "an integer >= 0")
        _require(self.warmup_steps >= 0, "train.warmup_steps", "an integer >= 0")
        _require(self.lr_schedule in ("linear", "constant"), "train.lr_schedule", "'linear' or 'constant'")
        _require(self.patience >= 1, "train.patience", "an integer >= 1")
        _require(self.eval_every >= 1, "train.eval_every", "an integer >= 1")
        _require(self.finetune_eval_every >= 1, "train.finetune_eval_every", "an integer >= 1")
        _require(self.sampled_softmax_above >= 0, "train.sampled_softmax_above", "an integer >= 0")
        _require(self.negatives >= 1, "train.negatives", "an integer >= 1")


@dataclass
class EvalConfig:
    exclude_history: bool = False  # true: items of the user's history are not ranked (the target always is)
    chunk_size: int = 65536  # catalog items scored at once
    batch_size: int = 512  # users per forward pass

    def check(self) -> None:
        _require(self.chunk_size >= 1, "eval.chunk_size", "an integer >= 1")
        _require(self.batch_size >= 1, "eval.batch_size", "an integer >= 1")

    def key(self) -> dict:
        return _without(self, ("chunk_size", "batch_size"))


@dataclass
class ObsConfig:
    """Where each process serves Prometheus metrics (see qbr_dist/obs/serve.py)."""

    enabled: bool = True  # false: no process serves metrics
    bind: str = "127.0.0.1"  # an address, or "node": this Ray node's address (cluster runs)
    port: int = 0  # 0 = a free port per process; N = the first free port from N up (a firewall opens N to N+63)
    targets_dir: str = ""  # Prometheus file_sd folder; "" = <run.root>/prometheus_targets

    def check(self) -> None:
        _require(bool(self.bind), "obs.bind", "an address to bind, or 'node'")
        _require(0 <= self.port <= 65535, "obs.port", "an integer in [0, 65535] (0 = pick a free port)")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    structure: StructureConfig = field(default_factory=StructureConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    obs: ObsConfig = field(default_factory=ObsConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def section_settings(self, *sections: str, **extra) -> dict:
        """The named sections (and any extra values) as plain data: what a stage's key holds of the config."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in sections} | extra


def load_config(path: str | Path | None = None, overrides: list[str] = (), grid: list[str] = ()) -> Config:
    """The file's config with each `--set` override, then a `--grid` point's (errors name the option at fault)."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML ({err})") from None
    set_by = {}  # section.key -> the option that gave it
    for option, items in (("--set", overrides), ("--grid", grid)):
        for item in items:
            set_by[_apply_override(raw, item)] = f"{option} {item}"
    try:
        return config_from_dict(raw)
    except ConfigError as err:
        raise _located(err, raw, path, set_by) from None


def _located(err: ConfigError, raw: dict, path: Path | None, set_by: dict[str, str]) -> ConfigError:
    """The error prefixed with where its settings came from (each --set or --grid, the file, or the defaults), with the
    value given where the message does not show it."""
    if err.key is None:
        return ConfigError(f"{path or 'defaults'}: {err}")
    given = [source for key in (err.key, *err.related) if (source := _source(key, raw, path, set_by))]
    value = _given(raw, err.key)
    shown = "" if value is None or "got " in str(err) else f", got {value!r}"
    fallback = str(path) if path else "defaults"  # a setting the file's others made invalid, or a default
    return ConfigError(f"{' and '.join(dict.fromkeys(given)) or fallback}: {err}{shown}", err.key, err.related)


def _source(key: str, raw: dict, path: Path | None, set_by: dict[str, str]) -> str | None:
    """The option or the file that gave `key` (section.key, or a section: every option that set a key of it); None
    when it has its default."""
    options = [given for dotted, given in set_by.items() if key in (dotted, dotted.partition(".")[0])]
    if options:
        return " and ".join(options)
    return str(path) if path and _given(raw, key) is not None else None


def _given(raw: dict, key: str):
    """The value the file or a --set gave `key` (section.name), or None."""
    section, _, name = key.partition(".")
    return raw[section].get(name) if isinstance(raw.get(section), dict) else None


def config_from_dict(raw: dict) -> Config:
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    built = {}
    for name, values in raw.items():
        if name not in sections:
            raise ConfigError(f"unknown config section '{name}' (known: {', '.join(sections)})", name)
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{name}' must be a table")
        built[name] = _build_section(hints[name], name, values)
    config = Config(**built)
    for name in sections:
        getattr(config, name).check()
    _check_across_sections(config)
    return config


def _check_across_sections(config: Config) -> None:
    """Settings that are only valid together: every worker needs some of each global batch."""
    workers, against = config.runtime.num_workers, ("runtime.num_workers",)
    _require(config.fusion.batch_size >= 2 * workers, "fusion.batch_size",
             f"at least 2 pairs per worker (2 x runtime.num_workers = {2 * workers}): with fewer, a worker's "
             "in-batch negatives are empty", related=against)
    _require(config.train.batch_size >= workers, "train.batch_size",
             f"at least one sequence per worker (runtime.num_workers = {workers})", related=against)
    if config.quant.mode == "rqvae":
        _require(config.quant.rqvae_batch_size >= workers, "quant.rqvae_batch_size",
                 f"at least one item per worker (runtime.num_workers = {workers})", related=(*against, "quant.mode"))


def _build_section(cls, section: str, values: dict):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"unknown config key '{section}.{key}' (known: {', '.join(hints)})", f"{section}.{key}")
        kwargs[key] = _coerce(f"{section}.{key}", hints[key], value)
    return cls(**kwargs)


def _coerce(key: str, expected, value):
    origin = typing.get_origin(expected)
    if origin is list:
        (inner,) = typing.get_args(expected)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}"
                              + (" (quote the strings in it: ['a', 'b'])" if isinstance(value, str) else ""), key)
        return [_coerce(key, inner, v) for v in value]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is bool and not isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}", key)
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}", key)
    if not isinstance(value, expected):
        raise ConfigError(f"config key '{key}': expected {expected.__name__}, got {value!r}"
                          + (" (quote it: 'value')" if expected is str else ""), key)
    return value


def _apply_override(raw: dict, item: str) -> str:
    """Set `item` (section.key=value) in `raw`; returns section.key."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(f"override {item!r}: expected section.key=value")
    dotted, text = item.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word is a string: --set run.name=demo
    if not isinstance(raw.setdefault(section, {}), dict):
        raise ConfigError(f"override {item!r}: '{section}' is not a config section in the file")
    raw[section][key] = value
    return f"{section}.{key}"


def _require(ok: bool, key: str, expected: str, *, related: tuple[str, ...] = ()) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': expected {expected}", key, related)
