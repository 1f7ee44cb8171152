"""The pretrain section: self-supervised encoder pretraining without labels (MoCo v2, SimCLR, BYOL via lightly)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from geocnn.config.common import Strict


class ViewsConfig(Strict):
    """The two random views of each chip; every knob left unset takes the domain's default (galaxies: free rotation,
    flips, small zoom, Gaussian noise, no band-wise jitter; Earth: dihedral turns and flips, band-wise brightness)."""

    rotate: bool | None = Field(None, description="Random rotation 0-360 degrees (galaxies: on; Earth: off).")
    flip: bool | None = Field(None, description="Random horizontal/vertical flips (both domains: on).")
    rot90: bool | None = Field(None, description="Random quarter turns, exact (Earth: on, with flips the 8 dihedral "
                               "views; galaxies: off, rotate covers it).")
    zoom: float | None = Field(None, ge=0, lt=1, description="Max zoom in/out as a fraction (galaxies 0.15, Earth "
                               "0.1).")
    translate: float | None = Field(None, ge=0, le=0.5, description="Max shift as a fraction of the chip side "
                                    "(galaxies 0.05, Earth 0.1).")
    brightness: float | None = Field(None, ge=0, lt=1, description="Max relative brightness change of the whole "
                                     "chip (galaxies 0.2, Earth 0.1).")
    band_brightness: float | None = Field(None, ge=0, lt=1, description="Max relative brightness change per band "
                                          "(Earth 0.2; galaxies 0: no colour/hue jitter, colour is physics).")
    noise: float | None = Field(None, ge=0, description="Std of added Gaussian noise in normalised units "
                                "(galaxies 0.1, Earth 0.05).")


class PretrainConfig(Strict):
    """Self-supervised pretraining of the experiment's encoder (model.backbone) on its images without labels."""

    method: Literal["moco", "simclr", "byol"] = Field(
        "moco", description="moco (MoCo v2: momentum encoder + a memory bank of negatives, so the loss does not "
        "depend on the batch size: works at batch 32-64 on a CPU and scales to large GPU batches), simclr "
        "(in-batch negatives: wants large batches), byol (no negatives: momentum target + predictor).")
    epochs: int = Field(20, gt=0, description="Passes over the unlabeled images.")
    batch_size: int = Field(64, ge=2, description="Images per step (two views each).")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="adamw (robust at small budgets) or sgd "
                                               "(momentum 0.9, the papers' choice for long runs).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (cosine decay after one warm-up epoch).")
    weight_decay: float = Field(1e-4, ge=0, description="Weight decay.")
    temperature: float = Field(0.2, gt=0, description="moco/simclr: softmax temperature of the contrastive loss.")
    memory_bank_size: int = Field(4096, ge=0, description="moco: negatives kept in the memory bank (capped at half "
                                  "the number of images, so an image's own older key rarely serves as its negative).")
    momentum: float = Field(0.99, ge=0, lt=1, description="moco/byol: EMA momentum of the key/target encoder at "
                            "the start (cosine schedule to 1 at the end).")
    hidden_dim: int = Field(512, gt=0, description="Projection head hidden width.")
    proj_dim: int = Field(128, gt=0, description="Projection (embedding) dimension.")
    max_images: int | None = Field(None, gt=0, description="Galaxies / tiles: use at most this many images "
                                   "(a seeded random subset); default all.")
    chips: int = Field(2000, gt=0, description="Earth scenes: chips sampled uniformly across earth.scenes (ignored "
                       "with data.tiles: the tiles themselves are used).")
    views: ViewsConfig = Field(default_factory=ViewsConfig)
    out: str = Field("data/encoders/{name}", description="Output folder; the encoder bundle goes to <out>/encoder. "
                     "'{name}' expands to the experiment name.")

    @model_validator(mode="after")
    def _bank(self) -> "PretrainConfig":
        if self.method == "moco" and self.memory_bank_size and self.memory_bank_size < self.batch_size:
            raise ValueError(f"pretrain.memory_bank_size={self.memory_bank_size} is smaller than pretrain.batch_size="
                             f"{self.batch_size}; use at least one batch of negatives (or 0 for in-batch negatives)")
        return self
