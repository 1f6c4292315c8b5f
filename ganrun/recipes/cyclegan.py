"""Unpaired image-to-image translation: CycleGAN (Zhu et al. 2017, "Unpaired Image-to-Image
Translation using Cycle-Consistent Adversarial Networks"; junyanz/pytorch-CycleGAN-and-pix2pix
models/cycle_gan_model.py and util/image_pool.py).

G_AB: A -> B and G_BA: B -> A, D_A judges domain A, D_B domain B. G's objective (eq. 3, plus the
identity term of sec. 5.2):
    adversarial_weight * (adv(D_B, G_AB(A)) + adv(D_A, G_BA(B)))          G/adv_AB, G/adv_BA
  + lambda_A * |G_BA(G_AB(A)) - A| + lambda_B * |G_AB(G_BA(B)) - B|        G/cycle_A, G/cycle_B
  + lambda_identity * (lambda_A * |G_BA(A) - A| + lambda_B * |G_AB(B) - B|)   G/idt_A, G/idt_B
(L1 means; idt_X: domain X's images through the generator that outputs X, unchanged; the
reference calls these idt_B and idt_A). D's terms come from the loss object for each D, on
real images against fakes drawn through a 50-image history pool per D (Shrivastava et al.
2017), logged as D/real_A, D/fake_A, D/real_B, D/fake_B (+ D/gp_X, D/r1_X when on).
Batches come from dataset=unpaired: {"A": images of A, "B": images of B}, drawn independently.

LSGAN: ganrun's LeastSquaresLoss keeps Mao et al.'s 1/2 factors, 0.5 * (D(G(x)) - 1)^2 for G;
the reference's G term is MSE(D(G(x)), 1), twice that (its D loss, 0.5 * (MSE(D(x), 1) +
MSE(D(G(x)), 0)), equals ganrun's). With loss=lsgan, adversarial_weight=2.0 reproduces the
reference objective exactly; the cyclegan experiment sets it. With loss=bce the reference's
"vanilla" G term is ganrun's as it is: adversarial_weight=1.0.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ganrun.errors import GanrunError
from ganrun.recipes.base import Stepper, add_terms, clip_weights, generator_adversarial
from ganrun.recipes.pix2pix import TranslationRecipe, check_weight

# classes


class ImagePool:
    """A history of generated images (util/image_pool.py's ImagePool): D trains on a mix of the
    current fakes and older ones, so G cannot chase the latest D alone.

    `query(images)`, image by image: while fewer than `capacity` are stored, store it and return
    it; once full, with probability 1/2 return a uniformly chosen stored image and store the new
    one in its place, else return the new one. capacity 0 returns the images as they are.
    The draws come from the pool's own torch.Generator (seeded by `seed`), so `state_dict()`
    (the stored images and that generator's state, tensors only) makes a resumed run draw
    exactly what the uninterrupted one would.
    """

    def __init__(self, *, capacity: int = 50, seed: int = 0):
        if capacity < 0:
            raise GanrunError(f"model.pool_size must be >= 0 (0 = no pool), got {capacity}; the paper uses 50")
        self.capacity = capacity
        self.generator = torch.Generator().manual_seed(seed)
        self.images = torch.empty(0)  # (count, C, H, W); grows to capacity, then entries are swapped

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def query(self, images: torch.Tensor) -> torch.Tensor:
        """images float (N, C, H, W) (detached) -> N images of the same shape, device and dtype."""
        if self.capacity == 0:
            return images
        images = images.detach()
        # `take` new images fill the pool; the others meet a full pool.
        take = min(len(images), self.capacity - len(self.images))
        if take:
            # A copy: the pool must not keep the whole batch's storage alive.
            new = images[:take].clone(memory_format=torch.contiguous_format)
            self.images = new if not len(self.images) else torch.cat([self.images.to(new), new])
        if take == len(images):
            return images
        self.images = self.images.to(images)  # the checkpoint's CPU copy onto the device, once
        rest = len(images) - take
        # The reference draws p ~ U(0, 1) per image and swaps when p > 0.5: the same law, drawn at once.
        swaps = (torch.rand(rest, generator=self.generator) > 0.5).tolist()
        slots = torch.randint(self.capacity, (rest,), generator=self.generator).tolist()
        out = images.clone()
        for offset, (swap, slot) in enumerate(zip(swaps, slots)):
            if swap:  # in order: a slot drawn twice in one batch returns the image stored just before
                index = take + offset
                out[index] = self.images[slot]
                self.images[slot] = images[index]
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"images": self.images, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        images = state["images"]
        if len(images) > self.capacity:
            raise GanrunError(f"the checkpoint's image pool holds {len(images)} images, more than model.pool_size={self.capacity}")
        self.images = images.clone() if images.numel() else torch.empty(0)
        self.generator.set_state(state["rng"].cpu())


class CycleGANRecipe(TranslationRecipe):
    """CycleGAN on networks {"G": CycleGenerators (G_AB, G_BA), "D": CycleDiscriminators (D_A, D_B)}:
    one optimizer for both generators and one for both discriminators (optim.G / optim.D), as
    the reference's Adam over chain(G_A, G_B) and chain(D_A, D_B); the loop's EMA of
    networks["G"] averages both generators.

    Per step (the reference's optimize_parameters order): the G step on the terms of the module
    docstring with both Ds frozen, then one D step for both Ds on real images against pooled
    fakes of that same forward. n_critic > 1 (loss=wgan/wgan_gp): extra D steps first, on
    earlier chunks of the batch, with fakes made without gradients.
    The identity terms need G_AB and G_BA to map a domain onto itself, so they are used only
    when A and B have the same channels (and lambda_identity > 0).

    lambda_A, lambda_B: cycle weights (10, sec. 7.1); lambda_identity: identity weight relative
    to them (0.5, the reference's default; sec. 5.2); adversarial_weight: factor on both G
    adversarial terms (2.0 with loss=lsgan reproduces the reference, see the module docstring);
    pool_size: images per history pool (50, sec. 4).
    """

    directions = ("AtoB", "BtoA")
    grid_columns = 6  # A | G_AB(A) | G_BA(G_AB(A)) | B | G_BA(B) | G_AB(G_BA(B))

    def __init__(
        self,
        *,
        G: nn.Module,
        D: nn.Module,
        loss: Any,
        optim: dict[str, Any],
        lambda_A: float = 10.0,
        lambda_B: float = 10.0,
        lambda_identity: float = 0.5,
        adversarial_weight: float = 1.0,
        pool_size: int = 50,
    ):
        super().__init__()
        for key, value in (("lambda_A", lambda_A), ("lambda_B", lambda_B), ("lambda_identity", lambda_identity),
                           ("adversarial_weight", adversarial_weight)):
            check_weight(key, value)
        if not hasattr(G, "G_AB") or not hasattr(D, "D_A"):
            raise GanrunError("CycleGAN needs model.G = ganrun.models.cyclegan.CycleGenerators and "
                              "model.D = ganrun.models.cyclegan.CycleDiscriminators")
        self.loss = loss
        self.lambda_A, self.lambda_B, self.lambda_identity = lambda_A, lambda_B, lambda_identity
        self.adversarial_weight = adversarial_weight
        self.identity = lambda_identity > 0 and G.G_AB.in_channels == G.G_AB.out_channels
        self.size_multiple, self.min_size = G.size_multiple, G.min_size
        # The pools' generators are seeded from torch's global one, so trainer.seed fixes them.
        seeds = torch.randint(0, 2**62, (2,)).tolist()
        self.pools = {domain: ImagePool(capacity=pool_size, seed=seed) for domain, seed in zip("AB", seeds)}
        self.networks = {"G": G, "D": D}
        self.train_networks = dict(self.networks)
        self.bind_optimizers(optim)

    @property
    def batches_per_step(self) -> int:
        return self.loss.n_critic

    def generate(self, G: nn.Module, images: torch.Tensor, direction: str) -> torch.Tensor:
        return G(images, direction=direction)

    @staticmethod
    def critic(D: nn.Module, domain: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """Domain `domain`'s discriminator as the loss objects' one-argument critic."""
        return lambda images: D(images, domain=domain)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pools": {domain: pool.state_dict() for domain, pool in self.pools.items()}}

    def load_state_dict(self, state: dict, *, step: int = 0) -> None:
        super().load_state_dict(state, step=step)
        for domain, pool in self.pools.items():
            pool.load_state_dict(state["pools"][domain])

    # the loop's side

    def train_step(self, batch: dict[str, torch.Tensor], stepper: Stepper) -> dict[str, torch.Tensor]:
        G, D = self.train_networks["G"], self.train_networks["D"]
        steps = self.batches_per_step
        chunks_A, chunks_B = batch["A"].chunk(steps), batch["B"].chunk(steps)
        terms: dict[str, torch.Tensor] = {}
        for A, B in zip(chunks_A[:-1], chunks_B[:-1]):  # extra critic steps (n_critic > 1)
            with torch.no_grad(), stepper.autocast():
                fake_B, fake_A = G(A, direction="AtoB"), G(B, direction="BtoA")
            self._step_D(D, A, B, fake_A, fake_B, stepper, terms, share=1 / steps)
        A, B = chunks_A[-1], chunks_B[-1]
        with stepper.autocast():
            fake_B = G(A, direction="AtoB")
            rec_A = G(fake_B, direction="BtoA")
            fake_A = G(B, direction="BtoA")
            rec_B = G(fake_A, direction="AtoB")
            if self.identity:
                idt_A, idt_B = G(A, direction="BtoA"), G(B, direction="AtoB")
        g_terms: dict[str, torch.Tensor] = {}
        rejected: list[torch.Tensor] = []
        for name, domain, fake in (("adv_AB", "B", fake_B), ("adv_BA", "A", fake_A)):
            adversarial, share = generator_adversarial(self.loss, self.critic(D, domain), fake, D=D, stepper=stepper)
            g_terms[name] = self.adversarial_weight * sum(adversarial.values())
            if share is not None:
                rejected.append(share)
        # Pixel terms in fp32: means of small absolute differences lose bits in bf16.
        A32, B32 = A.float(), B.float()
        g_terms["cycle_A"] = self.lambda_A * F.l1_loss(rec_A.float(), A32)
        g_terms["cycle_B"] = self.lambda_B * F.l1_loss(rec_B.float(), B32)
        if self.identity:
            g_terms["idt_A"] = self.lambda_identity * self.lambda_A * F.l1_loss(idt_A.float(), A32)
            g_terms["idt_B"] = self.lambda_identity * self.lambda_B * F.l1_loss(idt_B.float(), B32)
        stepper.step("G", g_terms)
        add_terms(terms, "G", g_terms, share=1.0)
        self._step_D(D, A, B, fake_A, fake_B, stepper, terms, share=1 / steps)
        if len(rejected) == 2:
            # For the saturation alarm: the share of fake patches the Ds (before this step's update) call fake.
            terms["stat/D_acc_fake"] = (rejected[0] + rejected[1]) / 2
        return terms

    def _step_D(self, D: nn.Module, real_A: torch.Tensor, real_B: torch.Tensor, fake_A: torch.Tensor, fake_B: torch.Tensor,
                stepper: Stepper, totals: dict[str, torch.Tensor], *, share: float) -> None:
        """One step of both Ds (one optimizer): each on its real images against pooled fakes."""
        pooled = {"A": self.pools["A"].query(fake_A.detach()), "B": self.pools["B"].query(fake_B.detach())}
        d_terms: dict[str, torch.Tensor] = {}
        with stepper.autocast():
            for domain, real in (("A", real_A), ("B", real_B)):
                for name, value in self.loss.d_loss(self.critic(D, domain), real, pooled[domain], step=stepper.step_index).items():
                    d_terms[f"{name}_{domain}"] = value
        stepper.step("D", d_terms)
        clip_weights(self.networks["D"], self.loss.clip)
        add_terms(totals, "D", d_terms, share=share)

    # grids

    @torch.no_grad()
    def render(self, G: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rows of A | G_AB(A) | G_BA(G_AB(A)) | B | G_BA(B) | G_AB(G_BA(B)), flattened:
        (rows * 6, C, S, S) in [-1, 1]."""
        A, B = inputs["A"].float(), inputs["B"].float()
        fake_B, fake_A = self.translate(G, A, direction="AtoB"), self.translate(G, B, direction="BtoA")
        rec_A, rec_B = self.translate(G, fake_B, direction="BtoA"), self.translate(G, fake_A, direction="AtoB")
        return torch.stack([A, fake_B, rec_A, B, fake_A, rec_B], dim=1).flatten(0, 1)
