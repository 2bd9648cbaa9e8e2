"""RQ-VAE in one process: training lowers the reconstruction error, EMA updates move codes to
their items' mean, dead codes are re-seeded, and the codebook file reproduces the codes."""
import json

import torch

from qbr_dist.quant.codebook import codebook_version, load_codebooks, save_codebooks
from qbr_dist.quant.residual import decode, encode, residual_kmeans
from qbr_dist.quant.rqvae import RQVAE, mlp
from qbr_dist.quant.tokenizer import Tokenizer


def blobs(n=512, d=12, centres=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(centres, d, generator=generator) * 3
    return means[torch.randint(centres, (n,), generator=generator)] + 0.1 * torch.randn(n, d, generator=generator)


def started_model(data, *, levels=2, size=8, latent=4, seed=0):
    torch.manual_seed(seed)
    model = RQVAE(input_dim=data.shape[1], hidden=[32], latent_dim=latent, levels=levels, codebook_size=size)
    codebooks, _, stats = residual_kmeans(model.latents(data), levels=levels, codebook_size=size, iterations=10)
    model.start_codebooks(codebooks, torch.tensor([s.counts for s in stats]), 64 / len(data))
    return model


def relative_error(model, data):
    codes = encode(model.latents(data), model.codebooks)
    return float(((model.reconstruct(decode(codes, model.codebooks)) - data) ** 2).sum() / (data ** 2).sum())


def test_mlp_mirrors_widths_with_relu_between():
    net = mlp([12, 32, 4])
    assert [m.__class__.__name__ for m in net] == ["Linear", "ReLU", "Linear"]
    assert net(torch.zeros(3, 12)).shape == (3, 4)


def test_training_lowers_the_reconstruction_error():
    data = blobs()
    model = started_model(data)
    before = relative_error(model, data)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(300):
        out = model(data[torch.randint(len(data), (64,), generator=torch.Generator().manual_seed(step))])
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        model.update_codebooks(out["inputs"], out["codes"], decay=0.9, dead_fraction=0.05, seed=[0, step])
    assert out["codes"].shape == (64, 2) and out["commitment"] > 0
    assert relative_error(model, data) < 0.5 * before


def test_ema_update_moves_a_code_towards_its_items_and_reseeds_dead_codes():
    model = RQVAE(input_dim=4, hidden=[8], latent_dim=2, levels=1, codebook_size=3)
    model.start_codebooks(torch.tensor([[[0.0, 0.0], [5.0, 5.0], [9.0, 9.0]]]), torch.tensor([[10, 10, 10]]), 0.5)
    inputs = [torch.tensor([[1.0, 1.0], [1.0, 1.0], [5.0, 5.0], [5.0, 5.0]])]
    codes = torch.tensor([[0], [0], [1], [1]])
    reseeded = model.update_codebooks(inputs, codes, decay=0.5, dead_fraction=0.0, seed=[0])
    assert reseeded == 0
    # code 0: counts 0.5*5 + 0.5*2 = 3.5, sums 0.5*0 + 0.5*2 = 1 per coordinate
    assert torch.allclose(model.codebooks[0, 0], torch.tensor([1 / 3.5, 1 / 3.5]))
    assert torch.allclose(model.codebooks[0, 1], torch.tensor([5.0, 5.0]))
    model.ema_counts[0, 2] = 0.01  # code 2 unused for long: dead
    reseeded = model.update_codebooks(inputs, codes, decay=0.5, dead_fraction=0.5, seed=[1])
    assert reseeded == 1
    assert any(torch.equal(model.codebooks[0, 2], row) for row in inputs[0])


def test_a_plain_copy_from_the_tokenizer_tensors_computes_what_the_model_does():
    data = blobs(seed=2)
    model = started_model(data, seed=2)
    copy = RQVAE.from_tokenizer_tensors(model.tokenizer_tensors(), model.encoder_dims)
    assert torch.equal(copy.latents(data), model.latents(data))
    codes = encode(model.latents(data), model.codebooks)
    assert torch.equal(copy.reconstruct(decode(codes, copy.codebooks)), model.reconstruct(decode(codes, model.codebooks)))


def test_codebook_file_reproduces_the_codes_and_its_version_covers_the_encoder(tmp_path):
    data = blobs(seed=1)
    model = started_model(data, seed=1)
    path = tmp_path / "codebooks.safetensors"
    version = save_codebooks(path, model.tokenizer_tensors(), mode="rqvae", encoder_dims=json.dumps(model.encoder_dims))
    parts = Tokenizer.parts(path)
    tokenizer = Tokenizer.from_parts(parts)
    assert parts["version"] == version and tokenizer.mode == "rqvae"
    assert torch.equal(tokenizer.codes(data, chunk_size=100), encode(model.latents(data), model.codebooks))
    assert tokenizer.codes(data[:0]).shape == (0, len(model.codebooks))  # an empty batch: no codes, no error

    changed = model.tokenizer_tensors()
    changed["encoder.0.bias"] = changed["encoder.0.bias"] + 1e-3
    assert codebook_version(changed) != version  # codes depend on the encoder: so does the version
    tensors, _, metadata = load_codebooks(path)
    assert set(tensors) >= {"codebooks", "encoder.0.weight", "decoder.0.weight"} and metadata["mode"] == "rqvae"


def test_plain_codebook_file_tokenizes_without_an_encoder(tmp_path):
    data = blobs(seed=2)
    codebooks, codes, _ = residual_kmeans(data, levels=2, codebook_size=5, iterations=5)
    save_codebooks(tmp_path / "cb.safetensors", {"codebooks": codebooks}, mode="rkmeans")
    tokenizer = Tokenizer.from_parts(Tokenizer.parts(tmp_path / "cb.safetensors"))
    assert tokenizer.encoder is None and torch.equal(tokenizer.codes(data), codes)
