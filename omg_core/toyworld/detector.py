"""Which toy-world object is in this box? A small CNN trained on renders.

The composition benchmark asks one question many thousand times: in the box
where concept A was asked for, is A there — or B, or a base shape, or nothing?
A 32×32 crop of the box, resampled from the image, goes through a four-layer
CNN with one class per base object, one per personal object, and "empty".

It is trained only on ground-truth renders, never on generated images (that
would make it agree with the generator's mistakes). Generated images differ
from renders by softness and colour noise from the autoencoder, so the
training crops are blurred, noised and colour-jittered, objects take 35–95 %
of their box at any place inside it, and neighbouring objects may reach a
few pixels into the box — what a region's edge looks like in a composition.
``evaluate`` measures it on held-out renders, optionally passed through the
autoencoder (``degrade``), which is the best a generator could possibly do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omg_core.toyworld import scenes as S

CLASSES: tuple[str, ...] = (*S.BASE_OBJECTS, *S.PERSONAL_OBJECTS, "empty")
CROP = 32
ASSET = Path(__file__).resolve().parent.parent.parent / "assets" / "toyworld" / "detector.safetensors"


class DetectorNet(nn.Module):
    def __init__(self, n_classes: int = len(CLASSES), width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4
        )  # fmt: skip
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * 16, 128), nn.ReLU(), nn.Linear(128, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - 0.5) * 2.0))


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int = CROP) -> torch.Tensor:
    """Bilinear crops of normalised boxes [N, 4] (x0, y0, x1, y1 in 0..1) from
    images [N, 3, H, W] (one box per image), resampled to ``size``×``size``."""
    n = images.shape[0]
    x0, y0, x1, y1 = boxes.unbind(-1)
    theta = torch.zeros(n, 2, 3, dtype=images.dtype)
    theta[:, 0, 0] = x1 - x0
    theta[:, 0, 2] = x0 + x1 - 1.0
    theta[:, 1, 1] = y1 - y0
    theta[:, 1, 2] = y0 + y1 - 1.0
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ------------------------------------------------------------------ training data
def _random_region(rng: np.random.Generator) -> S.Box:
    w, h = (int(v) for v in rng.integers(20, S.IMAGE_SIZE + 1, size=2))
    if rng.random() < 0.5:  # square-ish regions are the common case (quadrants)
        h = int(np.clip(w + rng.integers(-4, 5), 20, S.IMAGE_SIZE))
    x = int(rng.integers(0, S.IMAGE_SIZE - w + 1))
    y = int(rng.integers(0, S.IMAGE_SIZE - h + 1))
    return (x, y, x + w, y + h)


def _neighbours(rng: np.random.Generator, region: S.Box, intrude: int = 3) -> list[S.PlacedObject]:
    """Up to two objects outside ``region`` that may reach ``intrude`` px into it."""
    x0, y0, x1, y1 = region
    inner = (x0 + intrude, y0 + intrude, x1 - intrude, y1 - intrude)
    out: list[S.PlacedObject] = []
    labels = (*S.BASE_OBJECTS, *S.PERSONAL_OBJECTS)
    for _ in range(int(rng.integers(0, 3))):
        for _ in range(20):
            s = int(rng.integers(14, 30))
            bx, by = (int(v) for v in rng.integers(-s // 3, S.IMAGE_SIZE - 2 * s // 3, size=2))
            b = (bx, by, bx + s, by + s)
            if S._apart(b, inner, 0) and all(S._apart(b, o.box, 1) for o in out):
                out.append(S.PlacedObject(labels[int(rng.integers(len(labels)))], b))
                break
    return out


def training_example(rng: np.random.Generator, label: str) -> tuple[np.ndarray, S.Box]:
    """A full image and a region box holding ``label`` ("empty": nothing)."""
    region = _random_region(rng)
    objects = _neighbours(rng, region)
    if label != "empty":
        objects.append(S.PlacedObject(label, S.box_in_region(rng, region, (0.35, 0.95))))
    background = str(rng.choice(list(S.BACKGROUNDS)))
    return S.render(objects, background), region


def make_dataset(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` examples, classes balanced: images [n,3,64,64], boxes [n,4] (0..1), labels [n]."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    images, boxes = [], []
    for c in labels:
        img, region = training_example(rng, CLASSES[int(c)])
        images.append(img)
        boxes.append([v / S.IMAGE_SIZE for v in region])
    return S.to_tensor(images), torch.tensor(boxes, dtype=torch.float32), torch.from_numpy(labels).long()


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur with its own sigma (pixels; 0 = none)."""
    r = 3
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    k = k / k.sum(-1, keepdim=True)  # [n, 7]
    n, c, h, w = x.shape
    xx = x.reshape(1, n * c, h, w)
    kh = k.repeat_interleave(c, 0)[:, None, None, :]
    kv = k.repeat_interleave(c, 0)[:, None, :, None]
    xx = F.conv2d(F.pad(xx, (r, r, 0, 0), mode="replicate"), kh, groups=n * c)
    xx = F.conv2d(F.pad(xx, (0, 0, r, r), mode="replicate"), kv, groups=n * c)
    return xx.reshape(n, c, h, w)


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Softness, grain and colour drift like an autoencoder's output."""
    n = images.shape[0]
    sigma = torch.rand(n, generator=gen) * 1.4
    x = _blur(images, sigma)
    gain = 1.0 + (torch.rand(n, 3, 1, 1, generator=gen) - 0.5) * 0.16
    shift = (torch.rand(n, 3, 1, 1, generator=gen) - 0.5) * 0.1
    x = x * gain + shift
    x = x + torch.randn(x.shape, generator=gen) * torch.rand(n, 1, 1, 1, generator=gen) * 0.05
    return x.clamp(0, 1)


def train_detector(
    steps: int = 2500,
    n_examples: int = 16000,
    seed: int = 0,
    batch: int = 128,
    degrade: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DetectorNet:
    """Train on seeded renders; ``degrade`` (e.g. an autoencoder round trip)
    is applied to half of the images once, before crops are taken."""
    torch.manual_seed(seed)
    images, boxes, labels = make_dataset(n_examples, seed)
    if degrade is not None:
        half = n_examples // 2
        with torch.no_grad():
            images[:half] = torch.cat([degrade(images[i : min(i + 256, half)]) for i in range(0, half, 256)]).clamp(
                0, 1
            )
    gen = torch.Generator().manual_seed(seed)
    net = DetectorNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        idx = torch.randint(0, n_examples, (batch,), generator=gen)
        jitter = (torch.rand(batch, 4, generator=gen) - 0.5) * (2.0 / S.IMAGE_SIZE)
        crops = crop_boxes(augment(images[idx], gen), (boxes[idx] + jitter).clamp(0, 1))
        loss = F.cross_entropy(net(crops), labels[idx], label_smoothing=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, steps)
    return net.eval()


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    n: int
    per_class: dict[str, float]
    confusions: list[tuple[str, str, int]]  # (true, predicted, count), most frequent first


def evaluate(
    detector: Detector, n: int = 2100, seed: int = 12345, degrade: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> Evaluation:
    """Accuracy on held-out renders (a seed never used in training)."""
    images, boxes, labels = make_dataset(n, seed)
    if degrade is not None:
        with torch.no_grad():
            images = torch.cat([degrade(images[i : i + 256]) for i in range(0, n, 256)]).clamp(0, 1)
    pred = torch.cat(
        [detector.probabilities(images[i : i + 512], boxes[i : i + 512]).argmax(-1) for i in range(0, n, 512)]
    )
    correct = pred == labels
    per_class = {c: float(correct[labels == i].float().mean()) for i, c in enumerate(CLASSES)}
    pairs: dict[tuple[str, str], int] = {}
    for t, p in zip(labels[~correct].tolist(), pred[~correct].tolist()):
        pairs[(CLASSES[t], CLASSES[p])] = pairs.get((CLASSES[t], CLASSES[p]), 0) + 1
    confusions = sorted(((t, p, k) for (t, p), k in pairs.items()), key=lambda r: -r[2])
    return Evaluation(float(correct.float().mean()), n, per_class, confusions)


class Detector:
    """The trained classifier behind a small API: images and boxes in, labels out."""

    def __init__(self, net: DetectorNet):
        self.net = net.eval()

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """images [N,3,H,W] in 0..1, boxes [N,4] normalised -> class probabilities [N, len(CLASSES)]."""
        return self.net(crop_boxes(images.float(), boxes.float())).softmax(-1)

    def classify(self, image: torch.Tensor, boxes: list[tuple[float, float, float, float]]) -> list[str]:
        """The most likely object in each box of one image [3,H,W]."""
        probs = self.probabilities(image[None].expand(len(boxes), -1, -1, -1), torch.tensor(boxes))
        return [CLASSES[i] for i in probs.argmax(-1).tolist()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()


def save_detector(detector: Detector, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in detector.state_dict().items()}
    save_file(state, str(path), metadata={"classes": ",".join(CLASSES)})


def load_detector(path: Path | None = None) -> Detector:
    """The shipped detector (``assets/toyworld/detector.safetensors``)."""
    from safetensors import safe_open

    path = Path(path or ASSET)
    if not path.exists():
        raise ValueError(
            f"no toy-world detector at {path}; train one with `python scripts/train_toyworld.py --detector`"
        )
    with safe_open(str(path), framework="pt") as f:
        classes = tuple((f.metadata() or {}).get("classes", "").split(","))
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    if classes != CLASSES:
        raise ValueError(f"the detector at {path} knows classes {classes}, this world has {CLASSES}; retrain it")
    net = DetectorNet()
    net.load_state_dict(state)
    return Detector(net)
