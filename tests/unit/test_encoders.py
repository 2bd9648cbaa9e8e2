"""Real encoders: the packaged MiniLM text model, and a tiny open_clip ViT built at random on purpose."""
import numpy as np
import pytest
import torch
from PIL import Image

from qbr_dist.encode.image import ImageEncoder, register_model_config
from qbr_dist.encode.text import EncoderUnavailable, TextEncoder, text_model_path
from tests.conftest import TINY_VIT

TEXTS = ["Toy Story (1995). Animation Children's Comedy", "GoldenEye (1995). Action Adventure Thriller", ""]


@pytest.fixture(scope="module")
def text_encoder():
    return TextEncoder()


def test_text_vectors_match_sentence_transformers(text_encoder):
    from sentence_transformers import SentenceTransformer

    ours = text_encoder(TEXTS)
    reference = SentenceTransformer(str(text_model_path("all-MiniLM-L6-v2")), device="cpu").encode(TEXTS)
    assert ours.shape == (3, 384) and ours.dtype == np.float32
    assert np.allclose(ours, reference, atol=1e-5)


def test_text_vectors_are_unit_length_and_distinct(text_encoder):
    vectors = text_encoder(TEXTS[:2])
    assert np.allclose((vectors**2).sum(1), 1.0, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) < 0.99
    assert text_encoder([]).shape == (0, 384)


def test_unknown_text_model_is_a_clear_error(tmp_path):
    with pytest.raises(EncoderUnavailable, match="not a local model folder"):
        TextEncoder(str(tmp_path / "nothing-here"))


def test_tiny_random_image_encoder():
    name = register_model_config(TINY_VIT)
    encoder = ImageEncoder(name, random_init=True)  # random weights on purpose: a test model
    images = torch.stack([encoder.preprocess(Image.new("RGB", (80, 60), c)) for c in ("red", "blue")])
    vectors = encoder(images)
    assert vectors.shape == (2, 32) and np.allclose((vectors**2).sum(1), 1.0, atol=1e-5)


def test_image_weights_must_be_given_or_declined_on_purpose(tmp_path):
    name = register_model_config(TINY_VIT)
    with pytest.raises(EncoderUnavailable, match="no weights given"):
        ImageEncoder(name)
    with pytest.raises(EncoderUnavailable, match="not found"):
        ImageEncoder(name, weights=str(tmp_path / "missing.pt"))
    with pytest.raises(EncoderUnavailable, match="not an open_clip model"):
        ImageEncoder("no-such-model", random_init=True)


def test_image_weights_load_from_a_local_file(tmp_path):
    name = register_model_config(TINY_VIT)
    first = ImageEncoder(name, random_init=True)
    torch.save(first.model.state_dict(), tmp_path / "w.pt")
    second = ImageEncoder(name, weights=str(tmp_path / "w.pt"))
    images = torch.randn(1, 3, 64, 64)
    assert np.allclose(first(images), second(images), atol=1e-6)


def test_encoder_files_are_what_the_actors_load_from_disk(tmp_path):
    from qbr_dist.config import EncodeConfig
    from qbr_dist.encode.job import encoder_files

    assert encoder_files(EncodeConfig()) == {}  # the packaged text model ships with the project on every node
    folder = tmp_path / "minilm"
    (folder / "1_Pooling").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "README.md"):
        (folder / name).write_text(name)
    weights, architecture = tmp_path / "vit.bin", tmp_path / "vit.json"
    files = encoder_files(EncodeConfig(text_model=str(folder), image_model="ViT-B-32", image_weights=str(weights),
                                       image_model_config=str(architecture)))
    assert files == {"encode.text_model config.json": folder / "config.json",
                     "encode.text_model model.safetensors": folder / "model.safetensors",
                     "encode.image_weights": weights, "encode.image_model_config": architecture}
    assert encoder_files(EncodeConfig(image_model="", image_weights=str(weights))) == {}  # no image encoder
    (folder / "model.safetensors").unlink()  # then transformers loads the .bin
    assert set(encoder_files(EncodeConfig(text_model=str(folder)))) == {"encode.text_model config.json",
                                                                        "encode.text_model pytorch_model.bin"}
