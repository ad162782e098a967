"""Reference timings for `sera bench stages`: the same stage-2 InfoGAN epoch and stage-3 classifier
epoch as sera, written plainly in PyTorch (same sizes, same layers, same losses, same per-epoch MI
observables). Prints one JSON object with seconds per epoch: the median over --epochs epochs
after a warm-up epoch, like `sera bench stages`.

    python tools/bench_reference.py --n 5000 --dim 768 --text-dim 768 --classes 4 --batch 64 --epochs 3

Needs torch (tested with 2.11.0). Threads: torch's default, like sera's. --device cuda:0 runs it
on a GPU (synchronised at the end of every timed epoch).
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def info_nce(a, b, tau):
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau
    return F.cross_entropy(logits, torch.arange(a.shape[0]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--text-dim", type=int, default=768)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--z", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    dev = torch.device(a.device)
    torch.set_default_device(dev)
    torch.manual_seed(0)
    n, d, dt, c, bs = a.n, a.dim, a.text_dim, a.classes, a.batch
    h = torch.randn(n, d)
    t = torch.randn(n, dt)
    y = torch.randint(0, c, (n,))
    W_y = torch.nn.Linear(d, c)
    W_t = torch.nn.Linear(d, dt)
    for m in (W_y, W_t):
        m.requires_grad_(False)
    G = torch.nn.Linear(a.z + c + dt, d)
    D = torch.nn.Linear(d, 1)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    beta = torch.distributions.Beta(torch.tensor(0.2), torch.tensor(0.2))
    tau = 0.07

    def gen(yb, tb):
        z = torch.randn(yb.shape[0], a.z)
        return G(torch.cat([z, F.one_hot(yb, c).float(), tb], 1))

    def stage2_epoch():
        perm = torch.randperm(n)
        for s in range(0, n - bs + 1, bs):
            idx = perm[s:s + bs]
            hb, yb, tb = h[idx], y[idx], t[idx]
            fake = gen(yb, tb)
            lam = beta.sample((bs, 1))
            mixed = lam * hb + (1 - lam) * fake.detach()
            d_loss = F.binary_cross_entropy_with_logits(D(mixed), lam)
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            lam = beta.sample((bs, 1))
            mixed = lam * hb + (1 - lam) * fake
            logits = D(mixed)
            g_loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
            g_loss = g_loss + F.cross_entropy(W_y(fake), yb) + info_nce(tb, W_t(fake), tau)
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
            d_loss.item(), g_loss.item()
        # The per-epoch MI observables sera records.
        with torch.no_grad():
            fakes = []
            for s in range(0, n - bs + 1, bs):
                hb, yb, tb = h[s:s + bs], y[s:s + bs], t[s:s + bs]
                fake = gen(yb, tb)
                F.cross_entropy(W_y(fake), yb).item()
                F.cross_entropy(W_y(hb), yb).item()
                (W_y(fake).argmax(-1) == yb).sum().item()
                info_nce(tb, W_t(fake), tau).item()
                info_nce(tb, W_t(hb), tau).item()
                fakes.append(fake)
            fake = torch.cat(fakes)[:512]
            real = h[:512]
            torch.cdist(fake, real).min(1).values.mean().item()
            rr = torch.cdist(real, real) + torch.eye(real.shape[0]) * 1e30
            rr.min(1).values.mean().item()

    clf = torch.nn.Linear(d, c)
    opt_c = torch.optim.Adam(clf.parameters(), lr=1e-3)
    x3 = torch.cat([h, h])
    y3 = torch.cat([y, y])

    def stage3_epoch():
        perm = torch.randperm(x3.shape[0])
        for s in range(0, x3.shape[0], bs):
            idx = perm[s:s + bs]
            loss = F.cross_entropy(clf(x3[idx]), y3[idx])
            loss.item()
            opt_c.zero_grad()
            loss.backward()
            opt_c.step()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    out = {"threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(dev)}
    for name, fn in (("stage2_epoch_s", stage2_epoch), ("stage3_epoch_s", stage3_epoch)):
        fn()  # warm-up
        sync()
        times = []
        for _ in range(a.epochs):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
