"""The two anchors of benchmarks/sae_throughput.py: SAELens and EleutherAI sparsify, each run with its
own SAE module, loss and its trainer's default optimizer settings, on batches given as row indices.

See sae_throughput.py's docstring for what each runs and why; `RunResult` is what every run returns.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass, field

import torch

from sae_core.metrics import fvu


def autocast_if(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@dataclass
class RunResult:
    """One framework's timed training run and the held-out FVU of what it trained."""

    seconds: float
    tokens: int
    fvu: float
    precision: str
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "tokens_per_s": round(self.tokens / self.seconds, 1),
            "fvu": round(self.fvu, 5),
            "precision": self.precision,
            "train_seconds": round(self.seconds, 2),
            "settings": self.settings,
        }


def _sae_lens_trainer(n_steps: int, args: argparse.Namespace, bf16: bool, batches):
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(args.seed)
    sae_cfg = TopKTrainingSAEConfig(
        d_in=args.d_in, d_sae=args.d_in * args.expansion, k=args.k, normalize_activations=args.sae_lens_normalize
    )
    lr = 3e-4  # LanguageModelSAERunnerConfig.lr
    trainer_cfg = SAETrainerConfig(
        total_training_samples=n_steps * args.batch,
        train_batch_size_samples=args.batch,
        lr=lr,
        lr_end=lr / 10,
        autocast=bf16,
    )
    return SAETrainer(cfg=trainer_cfg, sae=TopKTrainingSAE(sae_cfg), data_provider=batches)


def run_sae_lens(
    train: torch.Tensor, heldout: torch.Tensor, rows: torch.Tensor, args: argparse.Namespace, bf16: bool
) -> RunResult:
    trainer = _sae_lens_trainer(len(rows), args, bf16, iter(()))
    if args.sae_lens_normalize == "expected_average_only_in":
        trainer.activation_scaler.estimate_scaling_factor(args.d_in, (train[r] for r in rows), len(rows))
    started = time.perf_counter()
    for step_rows in rows:  # SAETrainer.fit's loop minus logging, evals and checkpoints
        trainer.maybe_reset_sparsity()
        trainer.step(train[step_rows])
        trainer.n_training_steps += 1
    seconds = time.perf_counter() - started
    if trainer.activation_scaler.scaling_factor is not None:
        trainer.sae.fold_activation_norm_scaling_factor(trainer.activation_scaler.scaling_factor)
    with torch.no_grad():
        recon = trainer.sae(heldout)
    settings = {"lr": trainer.cfg.lr, "betas": [trainer.cfg.adam_beta1, trainer.cfg.adam_beta2], "optimizer": "adam",
                "normalize_activations": args.sae_lens_normalize, "use_sparse_activations": False}
    return RunResult(seconds, rows.numel(), fvu(heldout, recon), "bf16-autocast" if bf16 else "fp32", settings)


def _sparsify_setup(args: argparse.Namespace):
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.config import TrainConfig as SparsifyTrainConfig
    from sparsify.sign_sgd import SignSGD

    defaults = SparsifyTrainConfig(SparseCoderConfig())  # for the trainer's default optimizer and auxk_alpha
    if defaults.optimizer != "signum":
        raise RuntimeError(f"sparsify's default optimizer is now {defaults.optimizer!r}: update this benchmark")
    torch.manual_seed(args.seed)
    coder_cfg = SparseCoderConfig(expansion_factor=args.expansion, k=args.k)
    sae = SparseCoder(args.d_in, coder_cfg, "cpu", dtype=torch.float32)
    lr = 5e-3 / (sae.num_latents / 2**14) ** 0.5  # Trainer's "signum" default
    optimizer = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95)
    optimizer.train()
    return sae, optimizer, defaults, lr


def _sparsify_steps(sae, optimizer, defaults, train: torch.Tensor, rows: torch.Tensor, bf16: bool) -> None:
    """The fvu-loss path of sparsify's Trainer.fit and its hook, one batch per optimiser step."""
    tokens_since_fired = torch.zeros(sae.num_latents, dtype=torch.long)
    did_fire = torch.zeros(sae.num_latents, dtype=torch.bool)
    for step, step_rows in enumerate(rows):
        batch = train[step_rows]
        if step == 0:
            sae.b_dec.data = batch.mean(0).to(sae.dtype)
        sae.set_decoder_norm_to_unit_norm()
        dead_mask = tokens_since_fired > defaults.dead_feature_threshold if defaults.auxk_alpha > 0 else None
        total_variance = (batch - batch.mean(0)).pow(2).sum()
        with autocast_if(bf16):
            out = sae(x=batch, y=batch, dead_mask=dead_mask, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        (out.fvu + defaults.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            tokens_since_fired += len(batch)
            tokens_since_fired[did_fire] = 0
            did_fire.zero_()


def run_sparsify(
    train: torch.Tensor, heldout: torch.Tensor, rows: torch.Tensor, args: argparse.Namespace, bf16: bool
) -> RunResult:
    sae, optimizer, defaults, lr = _sparsify_setup(args)
    previous_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # as Trainer.fit does
    try:
        started = time.perf_counter()
        _sparsify_steps(sae, optimizer, defaults, train, rows, bf16)
        seconds = time.perf_counter() - started
    finally:
        torch.set_float32_matmul_precision(previous_precision)
    optimizer.eval()  # the schedule-free average: what Trainer saves
    with torch.no_grad():
        top_acts, top_indices, _ = sae.encode(heldout)
        recon = sae.decode(top_acts, top_indices)
    settings = {"lr": lr, "optimizer": "signum (ScheduleFreeWrapper(SignSGD), momentum 0.95)",
                "auxk_alpha": defaults.auxk_alpha}
    return RunResult(seconds, rows.numel(), fvu(heldout, recon), "bf16-autocast" if bf16 else "fp32", settings)


def warm_up_anchors(train: torch.Tensor, rows: torch.Tensor, args: argparse.Namespace, bf16: bool) -> None:
    """Two steps of each anchor on throwaway models, so neither pays first-call costs on the clock."""
    trainer = _sae_lens_trainer(2, args, bf16, iter(()))
    for step_rows in rows[:2]:
        trainer.step(train[step_rows])
    sae, optimizer, defaults, _ = _sparsify_setup(args)
    _sparsify_steps(sae, optimizer, defaults, train, rows[:2], bf16)
